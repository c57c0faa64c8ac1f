"""Pulling from EHRs over FHIR: the upstreams file and the pure rules for what a pulled resource becomes."""
