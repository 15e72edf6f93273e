"""The azd hooks beyond the segments account: the Key Vault name after `azd down` (scripts/pre-provision.sh with a
fake `az` and `azd`, tests/fake_cli.py), the erasure key the postdeploy hook creates once (scripts/post-deploy.sh
with a fake `az` and vault), and the PowerShell twins of both hooks for Windows.

No PowerShell here (pwsh installs only by downloading a binary, which this machine cannot): the .ps1 scripts are
held to their bash originals by text, on what matters to azd and Azure: the az commands they run, the azd values
they set, the environment values they read and the names in azure.yaml. When `pwsh` is on PATH (a developer's
Windows or Mac), the Key Vault case also runs through the PowerShell script.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fake_cli import fake_az, fake_azd, fake_key_vault
from tests.test_infra_settings import _code

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TOKEN = "abcdefghij123"  # a resourceToken: uniqueString() is 13 characters


def deleted_vault(name: str, env: str = "prod", location: str = "swedencentral") -> dict[str, object]:
    """An entry of `az keyvault list-deleted` (the fields the hook reads)."""
    return {"name": name, "properties": {"location": location, "tags": {"azd-env-name": env},
                                         "scheduledPurgeDate": "2027-03-01T10:00:00+00:00"}}


def run_preprovision(tmp_path: Path, deleted: list[dict[str, object]] | None, *, generation: str | None = None,
                     script: str = "pre-provision.sh") -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    """The hook against a fake az whose `keyvault list-deleted` answers `deleted` (None: fails), in both output
    forms the scripts ask for (tsv rows for bash, JSON for PowerShell)."""
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    rows = "".join(f"{v['name']}\t{v['properties']['location']}\t{v['properties']['tags']['azd-env-name']}\t"  # type: ignore[index]
                   f"{v['properties']['scheduledPurgeDate']}\n" for v in deleted or [])  # type: ignore[index]
    (work / "deleted.tsv").write_text(rows, encoding="utf-8")
    (work / "deleted.json").write_text(json.dumps(deleted or []), encoding="utf-8")
    listing = "exit 1" if deleted is None else \
        f'case "$*" in *"-o json"*) cat "{work / "deleted.json"}" ;; *) cat "{work / "deleted.tsv"}" ;; esac'
    calls = fake_az(work, ('case "$*" in\n'
                           '  "account show"*) echo sub-123 ;;\n'
                           '  "provider show"*) echo Registered ;;\n'
                           f'  "keyvault list-deleted"*) {listing} ;;\n'
                           "esac\n"))
    azd_calls = fake_azd(work)
    env = {"PATH": f"{work}:/usr/bin:/bin", "AZURE_SUBSCRIPTION_ID": "sub-123", "AZURE_ENV_NAME": "prod",
           "AZURE_LOCATION": "swedencentral"}
    if generation is not None:
        env["KEY_VAULT_GENERATION"] = generation
    command = ["bash", str(SCRIPTS / script)] if script.endswith(".sh") else \
        ["pwsh", "-NoProfile", "-File", str(SCRIPTS / script)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    read = lambda path: path.read_text().splitlines() if path.exists() else []  # noqa: E731
    return result, read(calls), read(azd_calls)


def test_a_soft_deleted_vault_of_this_environment_moves_the_name_to_the_next_generation(tmp_path: Path) -> None:
    result, calls, azd = run_preprovision(tmp_path, [deleted_vault(f"kv-{TOKEN}")])
    assert result.returncode == 0, result.stdout + result.stderr
    assert azd == ["env set KEY_VAULT_GENERATION 2|"]
    assert f"kv-{TOKEN}-2" in result.stdout and "2027-03-01" in result.stdout
    assert f"az keyvault recover --name kv-{TOKEN}" in result.stdout  # the other way out, with the old secret
    assert "SendGrid API key" in result.stdout
    (listing,) = [line for line in calls if line.startswith("keyvault list-deleted")]
    assert "--subscription sub-123" in listing


def test_the_next_generation_skips_every_deleted_one(tmp_path: Path) -> None:
    deleted = [deleted_vault(f"kv-{TOKEN}"), deleted_vault(f"kv-{TOKEN}-2"), deleted_vault(f"kv-{TOKEN}-3")]
    result, _, azd = run_preprovision(tmp_path, deleted, generation="2")
    assert result.returncode == 0, result.stderr
    assert azd == ["env set KEY_VAULT_GENERATION 4|"]


def test_nothing_changes_when_the_current_name_is_free(tmp_path: Path) -> None:
    cases = [
        ([deleted_vault(f"kv-{TOKEN}"), deleted_vault(f"kv-{TOKEN}-2")], "3"),  # the live generation is 3
        ([deleted_vault(f"kv-{TOKEN}", env="staging")], None),  # another environment's vault
        ([deleted_vault(f"kv-{TOKEN}", location="westeurope")], None),  # same name only in another location
        ([deleted_vault("kv-hand-made-vault")], None),  # not a name the template makes
        ([], None),
    ]
    for deleted, generation in cases:
        result, _, azd = run_preprovision(tmp_path, deleted, generation=generation)
        assert result.returncode == 0, result.stderr
        assert azd == [], deleted
        assert "no soft-deleted vault holds the name" in result.stdout


def test_when_deleted_vaults_cannot_be_listed_the_hook_says_what_to_do(tmp_path: Path) -> None:
    result, _, azd = run_preprovision(tmp_path, None)
    assert result.returncode == 0 and azd == []
    assert "azd env set KEY_VAULT_GENERATION 2" in result.stdout
    result, _, _ = run_preprovision(tmp_path, [], generation="two")
    assert result.returncode != 0 and "KEY_VAULT_GENERATION must be a number" in result.stderr


def test_the_bicep_name_is_the_one_the_hook_reasons_about() -> None:
    main = _code(ROOT / "infra" / "main.bicep")
    assert "var resourceToken = toLower(uniqueString(" in main  # 13 characters, [a-z0-9]
    assert re.search(r"var generatedKeyVaultName = empty\(keyVaultGeneration\) \|\| keyVaultGeneration == '1' \? "
                     r"'kv-\$\{resourceToken\}' : 'kv-\$\{resourceToken\}-\$\{keyVaultGeneration\}'", main)
    assert re.search(r"@maxLength\(4\)\s*param keyVaultGeneration string = ''", main)  # kv- + 13 + - + 4 <= 24
    assert "name: vaultName" in main
    parameters = json.loads((ROOT / "infra" / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["keyVaultGeneration"]["value"] == "${KEY_VAULT_GENERATION}"
    for script in ("pre-provision.sh", "pre-provision.ps1"):
        assert "^(kv-[a-z0-9]{13})(-([0-9]{1,4}))?$" in (SCRIPTS / script).read_text(encoding="utf-8"), script


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="pwsh is not installed here (it installs only by "
                    "downloading a binary); the PowerShell hooks are compared to the bash ones by text below")
def test_the_powershell_preprovision_moves_the_vault_name_too(tmp_path: Path) -> None:
    result, _, azd = run_preprovision(tmp_path, [deleted_vault(f"kv-{TOKEN}")], script="pre-provision.ps1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert azd == ["env set KEY_VAULT_GENERATION 2|"]


# ---------------------------------------------------------------------------------------------- the erasure key

ERASURE_KEY = "erasure-hmac-key"


def run_postdeploy(tmp_path: Path, *, secrets: dict[str, str] | None = None, listing_fails: bool = False,
                   set_error: str = "", app_setting: str = "", vnet: bool = False, work: Path | None = None,
                   ) -> tuple[subprocess.CompletedProcess[str], list[str], Path]:
    """scripts/post-deploy.sh against a fake az (the blobs key is there at once) and a fake vault holding `secrets`
    (tests/fake_cli.py); `app_setting`: the app's ERASURE_KEY_SECRET; `work`: the folder of an earlier run, to run
    again on its vault. Returns the run, the az calls (of every run in `work`), the vault."""
    work = work or Path(tempfile.mkdtemp(dir=tmp_path))
    vault, arms = fake_key_vault(work, secrets=secrets, listing_fails=listing_fails, set_error=set_error)
    calls = fake_az(work, ('case "$1 $2 $3" in\n'
                           '  "functionapp keys list") echo "s3cr3t-blobs-key" ;;\n'
                           f'  "functionapp config appsettings") echo "{app_setting}" ;;\n'
                           f"{arms}"
                           "esac\n"))
    env = {"PATH": f"{work}:/usr/bin:/bin", "TMPDIR": str(work), "RESOURCE_GROUP": "rg-test",
           "AZURE_FUNCTION_APP_NAME": "func-test", "AZURE_FUNCTION_APP_HOSTNAME": "func-test.azurewebsites.net",
           "EVENT_GRID_SYSTEM_TOPIC_NAME": "evgt-test", "AZURE_KEY_VAULT_NAME": "kv-test",
           "SENDGRID_SECRET_NAME": "sendgrid-api-key", "AZURE_SUBSCRIPTION_ID": "sub-123",
           "VNET_ENABLED": "true" if vnet else "false"}
    result = subprocess.run(["bash", str(SCRIPTS / "post-deploy.sh")], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    return result, calls.read_text().splitlines(), vault


def secret_sets(calls: list[str]) -> list[str]:
    return [line for line in calls if line.startswith("keyvault secret set")]


def test_postdeploy_creates_a_missing_erasure_key_without_showing_it(tmp_path: Path) -> None:
    result, calls, vault = run_postdeploy(tmp_path, secrets={"sendgrid-api-key": "SG.x"})
    assert result.returncode == 0, result.stdout + result.stderr
    value = (vault / ERASURE_KEY).read_bytes()
    assert len(value) == 44 and len(base64.b64decode(value, validate=True)) == 32  # no newline, no BOM
    (created,) = secret_sets(calls)
    assert f"--vault-name kv-test --name {ERASURE_KEY} --file " in created
    assert "--encoding utf-8" in created and "--output none" in created and "--subscription sub-123" in created
    assert (vault / f"{ERASURE_KEY}.mode").read_text().split() == ["600", "700"], "only this user could read it"
    key_file = Path(created.split("--file ")[1].split()[0])
    assert not key_file.exists() and not key_file.parent.exists(), "the key file is deleted"
    shown = result.stdout + result.stderr + "\n".join(calls)
    assert value.decode() not in shown, "the erasure key is never printed, nor on an az command line"
    assert f"created the erasure key '{ERASURE_KEY}' in kv-test" in result.stdout
    assert "'sendgrid-api-key' is present" in result.stdout


def test_postdeploy_never_replaces_an_erasure_key(tmp_path: Path) -> None:
    result, calls, vault = run_postdeploy(tmp_path, secrets={ERASURE_KEY: "the-first-key"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert secret_sets(calls) == [] and (vault / ERASURE_KEY).read_text() == "the-first-key"
    assert f"erasure key '{ERASURE_KEY}' is present in kv-test" in result.stdout
    # run twice on an empty vault: the key made by the first run is the one that stays
    _, calls, vault = run_postdeploy(tmp_path)
    made = (vault / ERASURE_KEY).read_text()
    again, calls, _ = run_postdeploy(tmp_path, work=vault.parent)
    assert again.returncode == 0 and len(secret_sets(calls)) == 1, "only the first run set it"
    assert (vault / ERASURE_KEY).read_text() == made and "is present in kv-test" in again.stdout


def test_postdeploy_uses_the_erasure_key_name_the_app_reads(tmp_path: Path) -> None:
    result, calls, vault = run_postdeploy(tmp_path, app_setting="dsr-digest-key")
    assert result.returncode == 0, result.stdout + result.stderr
    (created,) = secret_sets(calls)
    assert "--name dsr-digest-key " in created and (vault / "dsr-digest-key").exists()
    (asked,) = [line for line in calls if line.startswith("functionapp config appsettings list")]
    assert "-g rg-test -n func-test" in asked and "ERASURE_KEY_SECRET" in asked


def test_postdeploy_says_what_to_run_when_it_cannot_create_the_erasure_key(tmp_path: Path) -> None:
    refusal = ("ERROR: the request with value={value} was refused\n"  # az does not do this; the hook copes anyway
               "(Forbidden) Caller is not authorized to perform action on resource.")
    result, calls, vault = run_postdeploy(tmp_path, set_error=refusal)
    assert result.returncode == 0, "the deployment does not fail for the erasure key"
    (attempt,) = secret_sets(calls)
    key_file = Path(attempt.split("--file ")[1].split()[0])
    assert not key_file.parent.exists(), "the key file is deleted when az fails too"
    assert "(Forbidden) Caller is not authorized" in result.stdout
    assert "was refused" not in result.stdout + result.stderr, "no az line that quotes the value"
    assert f"az keyvault secret set --vault-name kv-test --name {ERASURE_KEY} --file" in result.stdout
    assert f"az keyvault secret recover --vault-name kv-test --name {ERASURE_KEY}" in result.stdout
    assert "Key Vault Secrets Officer on kv-test" in result.stdout and "VNet" not in result.stdout
    assert not (vault / ERASURE_KEY).exists()
    # the vault cannot be listed (a private vault, no role yet): nothing is written, the same instruction
    for vnet in (False, True):
        result, calls, _ = run_postdeploy(tmp_path, listing_fails=True, vnet=vnet)
        assert result.returncode == 0 and secret_sets(calls) == []
        assert f"could not list the secrets of kv-test to look for the erasure key '{ERASURE_KEY}'" in result.stdout
        assert f"--name {ERASURE_KEY} --file" in result.stdout
        assert ("from a machine in the VNet" in result.stdout) is vnet


def test_the_postdeploy_twins_create_the_erasure_key_the_same_way() -> None:
    bash = (SCRIPTS / "post-deploy.sh").read_text(encoding="utf-8")
    pwsh = (SCRIPTS / "post-deploy.ps1").read_text(encoding="utf-8")
    for text in (bash, pwsh):
        code = re.sub(r"^\s*#.*$", "", text, flags=re.M)
        assert "[?name=='ERASURE_KEY_SECRET'].value | [0]" in code and "erasure-hmac-key" in code
        (create,) = [line for line in code.splitlines() if re.search(r"\baz\w?\s+keyvault secret set", line)
                     and "echo" not in line and "Write-Host" not in line]
        for part in ("--file", "--encoding utf-8", "--output none"):
            assert part in create + code[code.index(create) + len(create):][:200], part
        assert "--value" not in code, "a value on the command line would show in the process list"
        only_when_absent = ("\n    0)\n", "\n    *) ") if text is bash else ("'0' {", "default {")
        start = code.index("[?name=='${erasure_secret}'] | length(@)" if text is bash else
                           "[?name=='$erasureSecret'] | length(@)")
        assert code.index(only_when_absent[0], start) < code.index(create) < code.index(only_when_absent[1], start)
        assert "never replace" in text.lower() and "stop matching" in text
    assert "openssl rand -base64 32" in bash
    assert "New-Object byte[] 32" in pwsh and "[System.Security.Cryptography.RandomNumberGenerator]::Create()" in pwsh
    assert "UTF8Encoding($false)" in pwsh, "no BOM in the key file"
    deletes = r"finally \{\s*if \(\$valueFile\) \{ Remove-Item -LiteralPath \$valueFile"
    assert re.search(deletes, pwsh), "the .ps1 deletes the key file, whatever happened"
    printed = [line for line in pwsh.splitlines() if re.search(r"Write-(Host|Output)|Write-ErasureKeyByHand ", line)]
    assert printed and not [line for line in printed if "$erasureValue" in line or "$bytes" in line]


# ---------------------------------------------------------------------------------------------- the .ps1 twins

AZ_WRAPPERS = r"(?:az|azs|azt)"  # post-deploy.sh calls az through azs/azt (subscription options appended)


def az_commands(text: str) -> set[str]:
    """The az command groups and verbs a script runs ("keyvault list-deleted", "eventgrid system-topic list")."""
    text = re.sub(r"^\s*#.*$", "", text, flags=re.M)  # comments
    text = re.sub(r"`\n\s*", " ", text)  # PowerShell line continuations
    text = re.sub(r"\\\n\s*", " ", text)  # bash ones
    found = set()
    command = rf"(?:^|[\s(;|&]|\$\()({AZ_WRAPPERS})\s+((?:[a-z][a-z-]*\s+)*[a-z][a-z-]*)(?=\s+[-@$]|\s*$)"
    for match in re.finditer(command, text, flags=re.M):
        words = match.group(2).split()
        if words[0] in ("is", "cannot", "command"):  # prose in messages ("az cannot see ...")
            continue
        found.add(" ".join(words))
    return found


def azd_values_set(text: str) -> set[str]:
    return set(re.findall(r"(?:azd_set|Set-AzdValue)\s+([A-Z][A-Z0-9_]+)", text))


def env_values_read(text: str) -> set[str]:
    names = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", text)) | set(re.findall(r"\$env:([A-Z][A-Z0-9_]+)", text))
    names |= set(re.findall(r"'([A-Z][A-Z0-9_]{5,})'", text)) & {  # PowerShell names it reads through a list
        "RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "EVENT_GRID_SYSTEM_TOPIC_NAME"}
    return names - {"BASH_VERSION", "BASH_REMATCH"}


@pytest.mark.parametrize("hook", ["pre-provision", "post-deploy"])
def test_each_powershell_hook_runs_the_same_az_commands_and_sets_the_same_azd_values(hook: str) -> None:
    bash = (SCRIPTS / f"{hook}.sh").read_text(encoding="utf-8")
    pwsh = (SCRIPTS / f"{hook}.ps1").read_text(encoding="utf-8")
    assert az_commands(bash) == az_commands(pwsh), (sorted(az_commands(bash)), sorted(az_commands(pwsh)))
    assert len(az_commands(bash)) >= 3
    assert azd_values_set(bash) == azd_values_set(pwsh)
    read_bash, read_pwsh = env_values_read(bash), env_values_read(pwsh)
    assert read_bash - {"SECONDS"} == read_pwsh, (sorted(read_bash ^ read_pwsh))


def test_the_postdeploy_twins_build_the_same_event_subscription() -> None:
    bash = (SCRIPTS / "post-deploy.sh").read_text(encoding="utf-8")
    pwsh = (SCRIPTS / "post-deploy.ps1").read_text(encoding="utf-8")
    for needle in ("/runtime/webhooks/blobs?functionName=Host.Functions.", "systemKeys.blobs_extension",
                   "--endpoint-type webhook", "--included-event-types Microsoft.Storage.BlobCreated",
                   "/blobServices/default/containers/", "--max-delivery-attempts 30", "--event-ttl 1440",
                   "ExportOnNewSegmentFile", "segments-"):
        assert needle in bash and needle in pwsh, needle
    # never printed: the key, or the webhook URL that holds it
    printed = [line for line in pwsh.splitlines() if re.search(r"Write-(Host|Output)|Fail ", line)]
    printed += [line for line in bash.splitlines() if re.search(r"\becho\b|\bfail\b", line)]
    assert printed and not [line for line in printed if re.search(r"\$\{?(key|endpoint|quotedEndpoint)\b", line)]


def test_azure_yaml_runs_bash_on_posix_and_powershell_on_windows() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    for hook, script in (("preprovision", "pre-provision"), ("postdeploy", "post-deploy")):
        block = re.search(rf"^  {hook}:\n((?:    .*\n)+)", text, flags=re.M)
        assert block, hook
        posix = re.search(r"posix:\n\s+shell: (\S+)\n\s+run: (\S+)", block.group(1))
        windows = re.search(r"windows:\n\s+shell: (\S+)\n\s+run: (\S+)", block.group(1))
        assert posix and windows
        assert posix.groups() == ("sh", f"./scripts/{script}.sh")
        assert windows.groups() == ("pwsh", f"./scripts/{script}.ps1")
        assert (SCRIPTS / f"{script}.ps1").exists()
