"""Development-only helpers (local run); excluded from the deployed package by .funcignore."""
