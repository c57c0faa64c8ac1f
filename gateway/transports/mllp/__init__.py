"""MLLP (HL7 v2 over TCP): frame decoding and an asyncio listener that hands each message to the pipeline."""
