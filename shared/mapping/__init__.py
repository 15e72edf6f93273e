"""A row as a SendGrid contact, or the reason it cannot be one: field mapping and email rules."""
