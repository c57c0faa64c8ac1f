"""The HTTP transport: FHIR REST API, OAuth token endpoint, health and metrics."""
