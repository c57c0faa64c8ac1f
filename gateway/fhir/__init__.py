"""Pure FHIR logic: models, validation, search parameters, bundles. No database, network or web imports."""
