"""Adapters: pure translators from raw feed content to FHIR resources. No I/O."""
