"""Specialty medication gateway: EHR, lab and payer feeds in, FHIR R4 out."""

__version__ = "0.1.0"
