"""A SendGrid Marketing Contacts client on httpx. Imports nothing else of this app: only its own types."""
