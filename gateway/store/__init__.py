"""Persistence: the only package that speaks SQL. SQLite (embedded default) or PostgreSQL (scale-out)."""
