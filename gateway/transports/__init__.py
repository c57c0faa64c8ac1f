"""Ways in and out: HTTP (FastAPI) and, later, MLLP. Nothing imports this package."""
