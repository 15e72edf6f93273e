"""The export engine: read a segment file, map and validate profiles, upsert them into SendGrid.

Nothing in this package imports `azure.functions`: the trigger functions, the CLI and the tests all
drive the same plain-Python engine.
"""
