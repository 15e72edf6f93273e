"""Text encodings for segment files: which ones can read a file, and how undecodable bytes are marked.

Undecodable bytes never stop a read: each becomes a lone surrogate (U+DC00 + byte, like 'surrogateescape'),
and the readers reject the row holding one. 'surrogateescape' itself raises on bytes below 0x80, which UTF-16
and UTF-32 report (an odd trailing byte, an unpaired surrogate), so the readers use this handler instead.
"""

from __future__ import annotations

import codecs
import io

ESCAPE = "segment-escape"
_SAMPLE = "Email,Name\r\n"


def _escape_undecodable(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    return "".join(chr(0xDC00 + byte) for byte in error.object[error.start:error.end]), error.end


codecs.register_error(ESCAPE, _escape_undecodable)


def encoding_problem(name: str) -> str | None:
    """Why `name` cannot decode a segment file, or None when it can. Refuses unknown names, bytes-to-bytes
    codecs ('base64', 'zlib', 'rot13': LookupError when a file is opened) and codecs that cannot mark bad bytes
    ('idna', 'punycode': UnicodeError on the first row)."""
    try:
        info = codecs.lookup(name)
    except LookupError:
        return f"unknown encoding {name!r}"
    try:
        with io.TextIOWrapper(io.BytesIO(), encoding=info.name):
            pass
        decoded = codecs.getincrementaldecoder(info.name)(ESCAPE).decode(_SAMPLE.encode(info.name), final=True)
    except (LookupError, UnicodeError, TypeError, ValueError):
        return f"{name!r} is not a text encoding a segment file can be read with"
    if decoded != _SAMPLE:
        return f"{name!r} is not a text encoding a segment file can be read with"
    return None
