"""FHIR feeds from EHRs: what is pure about taking what an EHR pushes (matching results, marking them)."""
