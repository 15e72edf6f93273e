"""The infrastructure (infra/*.bicep, azure.yaml, scripts/post-deploy.sh) against what the code reads.

1. Every app setting `shared.settings.APP_SETTINGS` marks required-in-Azure is set by the template, and the
   template sets no setting the code does not declare (bar an explicit allow-list of platform settings).
2. Settings that must not be set on Flex Consumption, or ever in Azure, are absent; no keys or connection
   strings anywhere; the security properties the deployment promises are in the template.
3. checkov (if installed) reports 0 failed checks and no parsing errors, and parses every .bicep file.

The Bicep is read as text (no Bicep CLI here): comments are stripped, blocks are matched by braces.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from shared.destinations import load_destinations
from shared.settings import APP_SETTINGS

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"

# Set by the template although the code does not read them: the Functions host / Application Insights do.
PLATFORM_SETTINGS = frozenset({
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
})

# Never set: development-only, or not allowed / meaningless on Flex Consumption, or a connection string.
FORBIDDEN_SETTINGS = frozenset({
    "LOCAL_DEV_SENDGRID_API_KEY",
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_TIME_ZONE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_CONTENTSHARE",
    "AzureWebJobsStorage",  # the connection-string form; Azure uses the identity-based __ settings
    "APPINSIGHTS_INSTRUMENTATIONKEY",
})

ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
}
BROAD_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
}


# ---------------------------------------------------------------------------------------------- Bicep text


def _strip_comments(text: str) -> str:
    """Drops // and /* */ comments outside '...' strings (Bicep escapes a quote inside a string as \\')."""
    out: list[str] = []
    i, n, in_string = 0, len(text), False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if ch == "'":
                in_string = False
        elif ch == "'":
            in_string = True
            out.append(ch)
        elif text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _block(text: str, open_at: int) -> str:
    """The text between the bracket at `open_at` ('{' or '[') and its match, strings respected."""
    pairs = {"{": "}", "[": "]"}
    assert text[open_at] in pairs, f"no block at {open_at}: {text[open_at:open_at + 20]!r}"
    depth, in_string = 0, False
    for i in range(open_at, len(text)):
        ch = text[i]
        if in_string:
            if ch == "\\":
                continue
            if ch == "'" and text[i - 1] != "\\":
                in_string = False
            continue
        if ch == "'":
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    raise AssertionError("unbalanced brackets")


def _top_level_keys(block: str) -> list[str]:
    """Keys of an object literal's first level (`key: value` / `'key': value`), in order."""
    flat: list[str] = []
    depth, in_string = 0, False
    for ch in block:
        if in_string:
            flat.append(ch if depth == 0 else " ")
            if ch == "'":
                in_string = False
            continue
        if ch == "'":
            in_string = True
            flat.append(ch if depth == 0 else " ")
            continue
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        flat.append(ch if depth == 0 or ch == "\n" else " ")
    return re.findall(r"^\s*'?([A-Za-z_][A-Za-z0-9_]*)'?\s*:", "".join(flat), flags=re.MULTILINE)


def _bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


def _code(path: Path) -> str:
    return _strip_comments(path.read_text(encoding="utf-8"))


def _all_code() -> str:
    return "\n".join(_code(path) for path in _bicep_files())


def template_app_settings() -> dict[str, Path]:
    """App setting name -> file, from `config` resources named 'appsettings' and any siteConfig.appSettings."""
    found: dict[str, Path] = {}
    for path in _bicep_files():
        code = _code(path)
        for match in re.finditer(r"name:\s*'appsettings'", code):
            props = re.compile(r"\bproperties:\s*\{").search(code, match.end())
            assert props, f"{path}: appsettings resource without properties"
            for key in _top_level_keys(_block(code, props.end() - 1)):
                assert key not in found, f"app setting {key} is set twice"
                found[key] = path
        for match in re.finditer(r"\bappSettings:\s*\[", code):
            for name in re.findall(r"\bname:\s*'([^']+)'", _block(code, match.end() - 1)):
                assert name not in found, f"app setting {name} is set twice"
                found[name] = path
    return found


def _resources(code: str, type_prefix: str) -> list[tuple[str, str]]:
    """(symbolic name, body) of every `resource x 'Type@version' ... = {` whose type starts with type_prefix."""
    out = []
    pattern = re.compile(r"\bresource\s+(\w+)\s+'" + re.escape(type_prefix) + r"[^']*'[^=]*=[^{]*\{")
    for match in pattern.finditer(code):
        out.append((match.group(1), _block(code, match.end() - 1)))
    return out


def _param_default(code: str, name: str) -> str | None:
    match = re.search(rf"^param\s+{name}\s+\w+\s*=\s*'((?:[^'\\]|\\.)*)'", code, flags=re.MULTILINE)
    return match.group(1).replace("\\'", "'") if match else None


# ---------------------------------------------------------------------------------------------- helpers' own


def test_helpers_read_bicep_as_expected() -> None:
    sample = _strip_comments(
        "resource c 'config' = { // a comment with 'quotes'\n"
        "  name: 'appsettings'\n"
        "  properties: {\n"
        "    A: 'https://x//y'  // trailing\n"
        "    'B': union(a, { C: 1 })\n"
        "    /* D: 1 */\n"
        "    E: { F: [ 'G' ] }\n"
        "  }\n"
        "}\n"
    )
    assert "a comment" not in sample and "https://x//y" in sample and "D: 1" not in sample
    props = re.search(r"properties:\s*\{", sample)
    assert props
    assert _top_level_keys(_block(sample, props.end() - 1)) == ["A", "B", "E"]


# ---------------------------------------------------------------------------------------------- 1. settings


def test_template_sets_every_setting_required_in_azure() -> None:
    settings = template_app_settings()
    required = {name for name, (needed, _) in APP_SETTINGS.items() if needed}
    missing = sorted(required - set(settings))
    assert not missing, f"required in Azure (shared/settings.py) but not set by infra/: {missing}"


def test_template_sets_no_undeclared_setting() -> None:
    settings = template_app_settings()
    assert settings, "no app settings found in infra/ (parser or template broken)"
    undeclared = sorted(set(settings) - set(APP_SETTINGS) - PLATFORM_SETTINGS)
    assert not undeclared, (
        f"infra/ sets app settings the code does not declare in shared.settings.APP_SETTINGS: {undeclared}")


def test_app_settings_live_on_the_function_app() -> None:
    api = INFRA / "app" / "api.bicep"
    settings = template_app_settings()
    assert set(settings.values()) == {api}
    (_, site), = _resources(_code(api), "Microsoft.Web/sites@")
    assert re.search(r"resource\s+\w+\s+'config'", site), "appsettings must be a child of the Function App"


def test_storage_connection_is_identity_based() -> None:
    code = _code(INFRA / "app" / "api.bicep")
    assert re.search(r"AzureWebJobsStorage__credential:\s*'managedidentity'", code)
    assert re.search(r"AzureWebJobsStorage__clientId:\s*identityClientId", code)
    assert re.search(r"AZURE_CLIENT_ID:\s*identityClientId", code)
    assert re.search(r"APPLICATIONINSIGHTS_AUTHENTICATION_STRING:\s*'ClientId=\$\{identityClientId\};"
                     r"Authorization=AAD'", code)


# ---------------------------------------------------------------------------------------------- 2. forbidden


def test_forbidden_settings_are_absent() -> None:
    settings = template_app_settings()
    assert not sorted(FORBIDDEN_SETTINGS & set(settings))
    code = _all_code()
    for name in FORBIDDEN_SETTINGS - {"AzureWebJobsStorage"}:
        assert name not in code, f"{name} appears in infra/ (outside comments)"


def test_no_keys_or_connection_strings_in_templates() -> None:
    code = _all_code().lower()
    for needle in ("listkeys(", "listaccountsas(", "accountkey=", "defaultendpointsprotocol", "instrumentationkey=",
                   "sharedaccesssignature", "@secure()"):
        assert needle not in code, f"{needle!r} in infra/: secrets must not pass through the template"
    assert "microsoft.keyvault/vaults/secrets" not in code, "the template must never write a secret value"


def test_security_properties() -> None:
    storage = _code(INFRA / "app" / "storage.bicep")
    for prop in ("allowSharedKeyAccess: false", "allowBlobPublicAccess: false", "minimumTlsVersion: 'TLS1_2'",
                 "supportsHttpsTrafficOnly: true", "defaultToOAuthAuthentication: true"):
        assert prop in storage, f"storage account: {prop} missing"
    assert storage.count("publicAccess: 'None'") == 3, "every container must be private"
    keyvault = _code(INFRA / "app" / "keyvault.bicep")
    for prop in ("enableRbacAuthorization: true", "enableSoftDelete: true", "enablePurgeProtection: true"):
        assert prop in keyvault, f"key vault: {prop} missing"
    assert "accessPolicies" not in keyvault
    monitoring = _code(INFRA / "app" / "monitoring.bicep")
    assert "DisableLocalAuth: true" in monitoring
    api = _code(INFRA / "app" / "api.bicep")
    for prop in ("httpsOnly: true", "minTlsVersion: '1.2'", "ftpsState: 'Disabled'", "name: 'FC1'",
                 "tier: 'FlexConsumption'", "type: 'UserAssignedIdentity'", "'azd-service-name': 'api'"):
        assert prop in api, f"function app: {prop} missing"
    assert re.search(r"runtime:\s*\{\s*name:\s*'python'\s*version:\s*'3\.11'\s*\}", api)
    assert re.search(r"type:\s*'blobContainer'", api)


def test_role_assignments_are_least_privilege() -> None:
    code = _code(INFRA / "app" / "rbac.bicep")
    role_ids = dict(re.findall(r"^\s*(\w+):\s*'([0-9a-f-]{36})'", code, flags=re.MULTILINE))
    assert not set(role_ids.values()) & set(BROAD_ROLES), "no broad roles (Owner, Contributor, ...)"
    assert set(role_ids.values()) <= set(ROLES), f"unknown role IDs: {set(role_ids.values()) - set(ROLES)}"
    granted: dict[str, set[tuple[str, str]]] = {}
    for _, body in _resources(code, "Microsoft.Authorization/roleAssignments@"):
        role = re.search(r"roleDefinitionId:[^\n]*roles\.(\w+)", body)
        principal = re.search(r"principalId:\s*(\w+)", body)
        scope = re.search(r"^\s*scope:\s*(\w+)", body, flags=re.MULTILINE)
        assert role and principal and scope, f"unexpected role assignment:\n{body}"
        granted.setdefault(principal.group(1), set()).add((ROLES[role_ids[role.group(1)]], scope.group(1)))
    assert granted["identityPrincipalId"] == {
        ("Storage Blob Data Owner", "storage"),
        ("Storage Queue Data Contributor", "storage"),
        ("Monitoring Metrics Publisher", "applicationInsights"),
        ("Key Vault Secrets User", "keyVault"),
    }
    assert granted["deployerPrincipalId"] == {
        ("Key Vault Secrets Officer", "keyVault"),
        ("Storage Blob Data Contributor", "storage"),
    }
    assert set(granted) == {"identityPrincipalId", "deployerPrincipalId"}


def test_parameters() -> None:
    code = _code(MAIN)
    assert re.search(r"^targetScope\s*=\s*'subscription'", code, flags=re.MULTILINE)
    assert _param_default(code, "refreshSchedule") == "0 0 6 * * *"
    assert _param_default(code, "sendGridSecretName") == "sendgrid-api-key"
    default_doc = _param_default(code, "destinationsJson")
    assert default_doc is not None
    assert load_destinations(default_doc).destinations == []
    declared = set(re.findall(r"^param\s+(\w+)", code, flags=re.MULTILINE))
    without_default = set(re.findall(r"^param\s+(\w+)\s+\w+\s*$", code, flags=re.MULTILINE))
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert set(parameters) <= declared, f"main.parameters.json names unknown params: {set(parameters) - declared}"
    assert without_default <= set(parameters), f"params without a default need a value: {without_default}"
    for name, entry in parameters.items():
        value = str(entry["value"])
        assert re.fullmatch(r"\$\{[A-Z][A-Z0-9_]*\}", value), f"{name}: only plain azd substitutions, got {value!r}"


def test_base64_destinations_round_trip_through_azd_substitution() -> None:
    """azd substitutes ${VAR} into main.parameters.json as raw text: base64 survives, JSON quotes would not."""
    import base64

    document = (ROOT / "samples" / "destinations.local.json").read_text(encoding="utf-8")
    encoded = base64.b64encode(document.encode()).decode()
    text = (INFRA / "main.parameters.json").read_text(encoding="utf-8")
    substituted = re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}",
                         lambda m: encoded if m.group(1) == "DESTINATIONS_JSON_BASE64" else "x", text)
    value = json.loads(substituted)["parameters"]["destinationsJsonBase64"]["value"]
    assert load_destinations(base64.b64decode(value).decode()).destinations[0].name == "vip-customers"


def test_queue_and_containers_match_the_code() -> None:
    storage = _code(INFRA / "app" / "storage.bicep")
    main = _code(MAIN)
    export_service = (ROOT / "shared" / "export_service.py").read_text(encoding="utf-8")
    queue = re.search(r'^EXPORT_QUEUE\s*=\s*"([^"]+)"', export_service, flags=re.MULTILINE)
    assert queue and _param_default(storage, "exportQueueName") == queue.group(1)
    assert _param_default(main, "segmentsContainerName") == "segments"
    assert _param_default(main, "runsContainerName") == "export-runs"


# ---------------------------------------------------------------------------------------------- azd wiring


def test_azure_yaml_and_postdeploy_hook() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, flags=re.MULTILINE)
    assert service, "azure.yaml: service 'api' missing"
    body = service.group(1)
    for line in ("project: .", "language: python", "host: function"):
        assert re.search(rf"^\s+{re.escape(line)}\s*$", body, flags=re.MULTILINE), f"azure.yaml api: {line}"
    assert re.search(r"^  postdeploy:", text, flags=re.MULTILINE)
    assert "run: ./scripts/post-deploy.sh" in text
    script = ROOT / "scripts" / "post-deploy.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "scripts/post-deploy.sh must be executable"


def test_postdeploy_targets_the_event_grid_blob_trigger() -> None:
    source = (ROOT / "ExportSegment" / "__init__.py").read_text(encoding="utf-8")
    triggers = re.findall(r'@bp\.function_name\("(\w+)"\)\s*@bp\.blob_trigger\(([^)]*)\)', source)
    assert len(triggers) == 1, "expected one blob-triggered function"
    name, args = triggers[0]
    assert "BlobSource.EVENT_GRID" in args and 'connection="AzureWebJobsStorage"' in args
    script = (ROOT / "scripts" / "post-deploy.sh").read_text(encoding="utf-8")
    assert f"BLOB_TRIGGER_FUNCTION:-{name}" in script
    assert "/runtime/webhooks/blobs?functionName=Host.Functions.${function_name}" in script
    assert "systemKeys.blobs_extension" in script
    outputs = set(re.findall(r"^output\s+(\w+)", _code(MAIN), flags=re.MULTILINE))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script)) & {
        "RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "AZURE_FUNCTION_APP_HOSTNAME", "EVENT_GRID_SYSTEM_TOPIC_NAME",
        "SEGMENTS_CONTAINER_NAME", "AZURE_KEY_VAULT_NAME", "SENDGRID_SECRET_NAME"}
    assert used and used <= outputs, f"post-deploy.sh reads values main.bicep does not output: {used - outputs}"


# ---------------------------------------------------------------------------------------------- 3. checkov


def _checkov() -> str | None:
    beside = Path(sys.executable).parent / "checkov"
    if beside.exists():
        return str(beside)
    return shutil.which("checkov")


def test_every_checkov_skip_has_a_reason() -> None:
    for path in _bicep_files():
        for line in path.read_text(encoding="utf-8").splitlines():
            if "checkov:skip" in line:
                assert re.search(r"//\s*checkov:skip=CKV2?_[A-Z]+_\d+:\s*\S.{10,}", line), (
                    f"{path.name}: a checkov skip needs a reason: {line.strip()}")


def test_checkov_reports_no_failed_check() -> None:
    checkov = _checkov()
    if checkov is None:
        pytest.skip("checkov is not installed (.venv/bin/pip install -r requirements-dev.txt): infra not scanned")
    result = subprocess.run(
        [checkov, "-d", "infra", "--framework", "bicep", "--skip-download", "--quiet", "--compact",
         "--output", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )
    assert result.stdout.strip(), f"checkov printed nothing (rc {result.returncode}):\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    summary = {key: sum(int(r.get("summary", {}).get(key, 0)) for r in reports)
               for key in ("passed", "failed", "skipped", "parsing_errors")}
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert summary["failed"] == 0 and not failed, f"checkov failed checks: {failed}"
    assert summary["parsing_errors"] == 0, f"checkov could not parse: {reports}"
    assert summary["passed"] > 0, "checkov evaluated no check"
    assert result.returncode == 0
    for r in reports:
        for check in r.get("results", {}).get("skipped_checks", []):
            assert (check.get("check_result", {}).get("suppress_comment") or "").strip(), (
                f"skip without reason: {check['check_id']}")


def test_checkov_parses_every_bicep_file() -> None:
    if _checkov() is None:
        pytest.skip("checkov is not installed: Bicep parsing not verified")
    parser_module = pytest.importorskip("checkov.bicep.parser", reason="checkov is not importable here")
    parser = parser_module.Parser()
    files = _bicep_files()
    assert len(files) >= 8
    for path in files:
        template, _ = parser.parse(path)
        assert template is not None, f"checkov's Bicep parser cannot read {path} (a function it does not know?)"
        found = len(template.get("resources") or {}) + len(template.get("modules") or {})
        assert found > 0, f"{path}: checkov parsed it but found no resource or module"


# ---------------------------------------------------------------------------------------------- postdeploy run


def test_postdeploy_script_with_a_stand_in_az(tmp_path: Path) -> None:
    """Runs scripts/post-deploy.sh against a fake `az`: right webhook, right filter, key never printed."""
    calls = tmp_path / "calls.log"
    fake_az = tmp_path / "az"
    fake_az.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        'case "$1 $2" in\n'
        '  "functionapp keys") echo "s3cr3t-blobs-key" ;;\n'
        '  "keyvault secret") echo 0 ;;\n'
        "esac\n",
        encoding="utf-8",
    )
    fake_az.chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_FUNCTION_APP_HOSTNAME": "func-test.azurewebsites.net",
        "EVENT_GRID_SYSTEM_TOPIC_NAME": "evgt-test",
        "SEGMENTS_CONTAINER_NAME": "segments",
        "AZURE_KEY_VAULT_NAME": "kv-test",
        "SENDGRID_SECRET_NAME": "sendgrid-api-key",
    }
    result = subprocess.run(["bash", str(ROOT / "scripts" / "post-deploy.sh")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr, "the blobs_extension key must never be printed"
    assert "no secret 'sendgrid-api-key'" in result.stdout
    create = next(line for line in calls.read_text().splitlines() if line.startswith("eventgrid "))
    assert ("--endpoint https://func-test.azurewebsites.net/runtime/webhooks/blobs?"
            "functionName=Host.Functions.ExportOnNewSegmentFile&code=s3cr3t-blobs-key") in create
    assert "--system-topic-name evgt-test" in create
    assert "--included-event-types Microsoft.Storage.BlobCreated" in create
    assert "--subject-begins-with /blobServices/default/containers/segments/blobs/" in create
