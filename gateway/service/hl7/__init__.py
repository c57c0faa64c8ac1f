"""HL7 v2 ingest: the pipeline from message to stored resources and ACK, patient identity and its repair."""
