"""Use cases over the store: FHIR interactions, Bundle processing, API clients."""
