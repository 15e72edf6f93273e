"""Stand-ins for `az` and `azd` for running the azd hooks: each logs every call; `az` answers from a bash `case`
body, `azd` answers nothing (the test reads what the hook asked it to set from its log)."""

from __future__ import annotations

from pathlib import Path


def fake_az(folder: Path, case_body: str) -> Path:
    """Write `folder/az` (log each call's arguments, then run `case_body`); returns the calls log."""
    calls = folder / "calls.log"
    az = folder / "az"
    az.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "{calls}"\n{case_body}', encoding="utf-8")
    az.chmod(0o755)
    return calls


def fake_azd(folder: Path) -> Path:
    """Write `folder/azd`: logs each call (`args|`, one a line) and answers nothing; returns the calls log."""
    calls = folder / "azd.log"
    azd = folder / "azd"
    azd.write_text(f'#!/usr/bin/env bash\nprintf "%s|\\n" "$*" >> "{calls}"\n', encoding="utf-8")
    azd.chmod(0o755)
    return calls
