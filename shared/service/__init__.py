"""Wiring for the functions and the CLI: one run per destination, triggers, queued and pending runs."""
