"""Pure authentication and authorization: SMART scopes, client secrets, access tokens, client assertions.

No database, network, file or web imports: the token endpoint and the FHIR API call these functions with
the data they have already loaded.
"""
