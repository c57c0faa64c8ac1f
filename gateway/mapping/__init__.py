"""The declarative mappings in `mappings/`: loaded once, checked, and handed to the adapters as plain data."""
