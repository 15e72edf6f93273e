"""A stand-in `az` for running the azd hooks: it logs every call and answers from a bash `case` body."""

from __future__ import annotations

from pathlib import Path


def fake_az(folder: Path, case_body: str) -> Path:
    """Write `folder/az` (log each call's arguments, then run `case_body`); returns the calls log."""
    calls = folder / "calls.log"
    az = folder / "az"
    az.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{calls}"\n{case_body}', encoding="utf-8")
    az.chmod(0o755)
    return calls
