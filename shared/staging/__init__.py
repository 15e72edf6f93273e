"""Contacts between reading and sending: the spool on disk, the rejects file, batches within SendGrid's limits."""
