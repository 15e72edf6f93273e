"""Where a segment's bytes come from and what they hold: byte sources, file kinds and readers."""
