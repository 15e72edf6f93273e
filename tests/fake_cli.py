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


def fake_key_vault(folder: Path, *, secrets: dict[str, str] | None = None, listing_fails: bool = False,
                   set_error: str = "") -> tuple[Path, str]:
    """A Key Vault for a fake az, as `case "$1 $2 $3"` arms: the vault is the folder it returns (one file per secret,
    holding its value). `keyvault secret list --query "[?name=='N'] ..."` answers 1 or 0 (`listing_fails`: fails);
    `keyvault secret set --name N --file F` stores F's content, and F's and its folder's mode (`N.mode`, octal
    `file dir`) as they were when az read it; `--value V` stores V. `set_error`: set fails instead, with that on
    stderr (`{value}` in it becomes the value it was given, to test that a hook never repeats it)."""
    vault = folder / "vault"
    vault.mkdir(exist_ok=True)
    for name, value in (secrets or {}).items():
        (vault / name).write_text(value, encoding="utf-8")
    listing = "exit 1" if listing_fails else (
        "name=\"$(printf '%s' \"$*\" | sed -n \"s/.*name=='\\([^']*\\)'.*/\\1/p\")\"\n"
        f'    if [ -n "$name" ] && [ -e "{vault}/$name" ]; then echo 1; else echo 0; fi')
    failing = set_error.replace('"', '\\"').replace("{value}", '$value')
    store = (f'printf "%s\\n" "{failing}" >&2; exit 1' if set_error else
             f'if [ -z "$file" ]; then printf "%s" "$value" > "{vault}/$name"; else cp "$file" "{vault}/$name"\n'
             f'      stat -c %a "$file" "$(dirname "$file")" | tr "\\n" " " > "{vault}/$name.mode"; fi')
    arms = (f'  "keyvault secret list")\n    {listing} ;;\n'
            '  "keyvault secret set")\n'
            '    name=""; file=""; value=""\n'
            '    while [ $# -gt 0 ]; do\n'
            '      case "$1" in --name) name="$2"; shift ;; --file) file="$2"; shift ;; --value) value="$2"; shift ;;'
            ' esac\n'
            '      shift\n'
            '    done\n'
            '    [ -z "$file" ] || value="$(cat "$file")"\n'
            f'    {store} ;;\n')
    return vault, arms
