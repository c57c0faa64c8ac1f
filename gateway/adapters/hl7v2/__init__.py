"""HL7 v2 (ER7) messages to FHIR: tokenizing, grouping by message structure, mapping, ACKs."""
