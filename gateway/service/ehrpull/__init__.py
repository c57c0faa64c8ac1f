"""Pulling resources from upstream EHR FHIR servers: the HTTP client (tokens, rate, Retry-After) and the
incremental poller (checkpoints, leases, writes through the FHIR service)."""
