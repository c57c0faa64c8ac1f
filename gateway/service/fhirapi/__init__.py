"""FHIR interactions: create, read, update, delete, search, history, Bundles, and the audit trail of them."""
