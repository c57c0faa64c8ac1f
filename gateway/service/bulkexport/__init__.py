"""FHIR Bulk Data `$export`: the gateway as a Bulk Data server (kick-off, status, files, the builder)."""
