"""Contacts between reading and sending: the spool on disk and batches within SendGrid's limits."""
