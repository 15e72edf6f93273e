"""The infrastructure (infra/*.bicep, azure.yaml, the azd hooks, .funcignore, docs/deploy.md) against what the
code reads and what Flex Consumption and azd accept.

1. Every app setting `shared.config.settings.APP_SETTINGS` marks required-in-Azure is set by the template, and the
   template sets no setting the code does not declare (bar an explicit allow-list of platform settings).
2. Settings that must not be set on Flex Consumption, or ever in Azure, are absent; no siteConfig property Flex
   rejects; no keys or connection strings anywhere; the security properties the deployment promises are in the
   template.
3. What a first `azd up` needs: the azd values (deployer switch, instance minimum, storage SKU, retention), the
   host's table storage, the preprovision hook, the .funcignore patterns, and docs/deploy.md matching it all.
4. checkov (if installed) reports 0 failed checks and no parsing errors, and parses every .bicep file.

The Bicep is read as text (no Bicep CLI here): comments are stripped, blocks are matched by braces.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shared.config.destinations import load_destinations
from shared.config.settings import APP_SETTINGS
from tests.fake_cli import fake_az

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"

# Set by the template although the code does not read them: the Functions host / Application Insights do.
PLATFORM_SETTINGS = frozenset({
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
    # The host writes its diagnostic events to Table storage through the AzureWebJobsStorage connection
    # (Microsoft's Flex sample sets it, with Storage Table Data Contributor); no code of ours reads it.
    "AzureWebJobsStorage__tableServiceUri",
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
    "SEGMENTS_STORAGE",  # likewise for the segments account
    "APPINSIGHTS_INSTRUMENTATIONKEY",
})

ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "b86a8fe4-44ce-4948-aee5-eccb2c155cd7": "Key Vault Secrets Officer",
}
# siteConfig properties Flex Consumption sites refuse with ARM error 51021: "The following list of N site
# configuration properties (Site.SiteConfig.FtpsState, ...) for Flex Consumption sites is invalid. Please remove or
# rename them before retrying." Older regional stamps ignored them; the check is meant to reach every region.
# Runtime and scale live in functionAppConfig on Flex. Name (case-insensitive) -> where the rejection is reported.
FLEX_REJECTED_SITE_CONFIG = {
    "ftpsState": "Microsoft Q&A 2277522 (the 5-property 51021 message); microsoft/azure-pipelines-tasks#21032",
    "use32BitWorkerProcess": "Microsoft Q&A 2277522; microsoft/azure-pipelines-tasks#21032",
    "preWarmedInstanceCount": "Microsoft Q&A 2277522",
    "netFrameworkVersion": "Microsoft Q&A 2277522; microsoft/azure-pipelines-tasks#21032",
    # Contested in Azure/terraform-azurerm-avm-res-web-site#360 (the azurerm provider sends it), but ARM's own
    # 51021 message names it, and this app has no use for it.
    "functionsRuntimeScaleMonitoringEnabled": "Microsoft Q&A 2277522; microsoft/azure-pipelines-tasks#21032",
    "linuxFxVersion": "Azure/terraform-azurerm-avm-res-web-site#283 and #345 (verbatim 51021)",
    "functionAppScaleLimit": "Azure/azure-functions-host#10643 (verbatim 51021)",
}
# The siteConfig properties the templates may set: each known to pass on Flex. A new one must be checked first.
FLEX_SITE_CONFIG_ACCEPTED = frozenset({
    "minTlsVersion",  # Microsoft's Flex quickstarts set it
    "alwaysOn",  # Microsoft's azure-functions-flex-consumption-samples set it to false
    "http20Enabled",  # named in no 51021 rejection list
})

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


_STRING = r"'(?:[^'\\]|\\.)*'"
_DECORATOR = rf"@\w+\((?:{_STRING}|[^()'])*\)\s*"


def _param(code: str, name: str) -> tuple[str, str, str | None]:
    """(decorators as text, type, default as text or None) of `param name`; fails when it is not declared."""
    match = re.search(rf"((?:{_DECORATOR})*)^param\s+{name}\s+(\w+)(?:[ \t]*=[ \t]*(.+))?$", code,
                      flags=re.MULTILINE)
    assert match, f"param {name} is not declared"
    return match.group(1), match.group(2), match.group(3).strip() if match.group(3) else None


def _allowed(decorators: str) -> set[str]:
    match = re.search(r"@allowed\(\s*\[(.*?)\]\s*\)", decorators, flags=re.DOTALL)
    assert match, f"no @allowed in {decorators!r}"
    return set(re.findall(r"'([^']*)'", match.group(1)))


def _module_params(code: str, module: str) -> dict[str, str]:
    """name -> value text of the `params` of `module <module> '...' = {`."""
    match = re.search(rf"\bmodule\s+{module}\s+'[^']+'[^=]*=[^{{]*\{{", code)
    assert match, f"module {module} missing"
    body = _block(code, match.end() - 1)
    params = re.search(r"\bparams:\s*\{", body)
    assert params, f"module {module} has no params"
    block = _block(body, params.end() - 1)
    return {key: value.strip() for key, value in re.findall(r"^\s*(\w+):\s*(.+)$", block, flags=re.MULTILINE)
            if key in _top_level_keys(block)}


def _conditions(code: str, type_prefix: str) -> dict[str, str | None]:
    """symbolic name -> the `if (...)` condition (None: unconditional) of each resource of that type."""
    pattern = re.compile(r"\bresource\s+(\w+)\s+'" + re.escape(type_prefix)
                         + r"[^']*'\s*=\s*(?:if\s*\((.*?)\)\s*)?\{")
    return {m.group(1): m.group(2) for m in pattern.finditer(code)}


def _azd_values() -> dict[str, str]:
    """main.bicep parameter -> the azd environment value main.parameters.json substitutes into it."""
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    values = {}
    for name, entry in parameters.items():
        match = re.fullmatch(r"\$\{([A-Z][A-Z0-9_]*)\}", str(entry["value"]))
        assert match, f"{name}: only plain azd substitutions, got {entry['value']!r}"
        values[name] = match.group(1)
    return values


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
    assert not missing, f"required in Azure (shared/config/settings.py) but not set by infra/: {missing}"


def test_template_sets_no_undeclared_setting() -> None:
    settings = template_app_settings()
    assert settings, "no app settings found in infra/ (parser or template broken)"
    undeclared = sorted(set(settings) - set(APP_SETTINGS) - PLATFORM_SETTINGS)
    assert not undeclared, (
        f"infra/ sets app settings the code does not declare in shared.config.settings.APP_SETTINGS: {undeclared}")


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
    # The connection-string forms are prefixes of the identity-based settings: only the exact key is forbidden.
    for name in FORBIDDEN_SETTINGS - {"AzureWebJobsStorage", "SEGMENTS_STORAGE"}:
        assert name not in code, f"{name} appears in infra/ (outside comments)"


def test_no_site_config_property_flex_rejects() -> None:
    """None of FLEX_REJECTED_SITE_CONFIG anywhere (siteConfig, a 'web' config resource, ...), outside comments."""
    rejected = {name.lower(): name for name in FLEX_REJECTED_SITE_CONFIG}
    for path in _bicep_files():
        keys = re.findall(r"^\s*'?([A-Za-z_]\w*)'?\s*:", _code(path), flags=re.MULTILINE)
        found = sorted({rejected[key.lower()] for key in keys if key.lower() in rejected})
        assert not found, (f"{path.name} sets {found}, which Flex Consumption rejects (ARM 51021): "
                           f"{[FLEX_REJECTED_SITE_CONFIG[name] for name in found]}")
    site_configs = 0
    for path in _bicep_files():
        code = _code(path)
        for match in re.finditer(r"\bsiteConfig:\s*\{", code):
            site_configs += 1
            unknown = sorted(set(_top_level_keys(_block(code, match.end() - 1))) - FLEX_SITE_CONFIG_ACCEPTED)
            assert not unknown, f"{path.name}: siteConfig {unknown} not known to pass on Flex: check, then list it"
        assert not re.search(r"\bname:\s*'web'", code), f"{path.name}: a 'web' config resource is siteConfig too"
    assert site_configs == 1, "expected the Function App's one siteConfig block"


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
    assert storage.count("publicAccess: 'None'") == 2, "every container (runs, package) must be private"
    segments = _code(INFRA / "app" / "segments-storage.bicep")
    for prop in ("allowSharedKeyAccess: allowSharedKeyAccess", "allowBlobPublicAccess: false",
                 "minimumTlsVersion: 'TLS1_2'", "supportsHttpsTrafficOnly: true", "defaultToOAuthAuthentication: true",
                 "allowCrossTenantReplication: false"):
        assert prop in segments, f"segments account: {prop} missing"
    assert segments.count("publicAccess: 'None'") == 1, "the segments container must be private"
    keyvault = _code(INFRA / "app" / "keyvault.bicep")
    for prop in ("enableRbacAuthorization: true", "enableSoftDelete: true", "enablePurgeProtection: true"):
        assert prop in keyvault, f"key vault: {prop} missing"
    assert "accessPolicies" not in keyvault
    monitoring = _code(INFRA / "app" / "monitoring.bicep")
    assert "DisableLocalAuth: true" in monitoring
    api = _code(INFRA / "app" / "api.bicep")
    for prop in ("httpsOnly: true", "minTlsVersion: '1.2'", "name: 'FC1'",
                 "tier: 'FlexConsumption'", "type: 'UserAssignedIdentity'", "'azd-service-name': 'api'"):
        assert prop in api, f"function app: {prop} missing"
    # FTP off: Flex refuses siteConfig.ftpsState, so the 'ftp' publishing-credentials policy is what keeps it off.
    for policy in ("ftp", "scm"):
        assert re.search(rf"'basicPublishingCredentialsPolicies'\s*=\s*\{{\s*name:\s*'{policy}'\s*"
                         r"properties:\s*\{\s*allow:\s*false\s*\}", api), f"basic-auth {policy} publishing must be off"
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
        ("Storage Table Data Contributor", "storage"),
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
    from shared.service.export_service import EXPORT_QUEUE

    assert _param_default(storage, "exportQueueName") == EXPORT_QUEUE
    assert _param_default(main, "segmentsContainerName") == "segments"
    assert _param_default(main, "runsContainerName") == "export-runs"


# ---------------------------------------------------------------------------------------------- 3. first azd up


def test_host_table_storage_setting_and_role() -> None:
    """Microsoft's Flex sample gives the host table storage: the setting here, the role in test_role_assignments."""
    api = _code(INFRA / "app" / "api.bicep")
    assert re.search(r"AzureWebJobsStorage__tableServiceUri:\s*storage\.properties\.primaryEndpoints\.table\b", api)
    assert "AzureWebJobsStorage__tableServiceUri" in PLATFORM_SETTINGS


def test_deployer_data_access_is_an_explicit_switch() -> None:
    """azd fills principalId itself (emptying AZURE_PRINCIPAL_ID changes nothing): a bool decides the roles."""
    main = _code(MAIN)
    _, kind, default = _param(main, "grantDeployerDataAccess")
    assert (kind, default) == ("bool", "true")
    assert _azd_values()["grantDeployerDataAccess"] == "GRANT_DEPLOYER_DATA_ACCESS"
    params = _module_params(main, "rbac")
    assert params["grantDeployerDataAccess"] == "grantDeployerDataAccess"
    assert params["deployerPrincipalId"] == "principalId"
    rbac = _code(INFRA / "app" / "rbac.bicep")
    assert _param(rbac, "grantDeployerDataAccess")[1:] == ("bool", "true")
    variables = dict(re.findall(r"^var\s+(\w+)\s*=\s*(.+)$", rbac, flags=re.MULTILINE))
    for name, condition in _conditions(rbac, "Microsoft.Authorization/roleAssignments@").items():
        if name.startswith("app"):
            assert condition is None, f"{name}: the app's own roles are unconditional"
            continue
        assert name.startswith("deployer") and condition, f"{name}: a deployer role must be conditional"
        expression = variables.get(condition.strip(), condition)
        assert "grantDeployerDataAccess" in expression and "!empty(deployerPrincipalId)" in expression, (
            f"{name}: granted unless grantDeployerDataAccess is false and only when there is a principal")
    description = re.search(r"@description\('((?:[^'\\]|\\.)*)'\)\s*param\s+principalId\b", main)
    assert description and "GRANT_DEPLOYER_DATA_ACCESS" not in description.group(1) and (
        "grantDeployerDataAccess" in description.group(1)), "principalId's description must name the switch"
    assert 'AZURE_PRINCIPAL_ID \\"\\"' not in main, "emptying AZURE_PRINCIPAL_ID does not stop the roles"


def test_maximum_instance_count_starts_at_flex_minimum() -> None:
    """Flex's lowest maximumInstanceCount is 40 (highest 1000), in main.bicep and in the module."""
    for path in (MAIN, INFRA / "app" / "api.bicep"):
        decorators, kind, default = _param(_code(path), "maximumInstanceCount")
        assert kind == "int" and "@minValue(40)" in decorators and "@maxValue(1000)" in decorators, path.name
        assert default is not None and 40 <= int(default) <= 1000
    assert _module_params(_code(MAIN), "api")["maximumInstanceCount"] == "maximumInstanceCount"
    assert _azd_values()["maximumInstanceCount"] == "MAXIMUM_INSTANCE_COUNT"
    assert _azd_values()["instanceMemoryMB"] == "INSTANCE_MEMORY_MB"


def test_storage_sku_and_retention_are_azd_values() -> None:
    main = _code(MAIN)
    decorators, kind, default = _param(main, "storageSkuName")
    assert (kind, default) == ("string", "'Standard_ZRS'")
    allowed = _allowed(decorators)
    assert {"", "Standard_LRS", "Standard_ZRS"} <= allowed, "LRS for regions without zones; '' = azd's empty value"
    storage = _code(INFRA / "app" / "storage.bicep")
    storage_decorators, _, storage_default = _param(storage, "skuName")
    assert allowed - {""} <= _allowed(storage_decorators) and storage_default == "'Standard_ZRS'"
    assert re.search(r"^var\s+storageSku\s*=\s*!empty\(storageSkuName\)\s*\?\s*storageSkuName\s*:\s*'Standard_ZRS'",
                     main, flags=re.MULTILINE), "an empty azd value must mean the default"
    segments = _code(INFRA / "app" / "segments-storage.bicep")
    segments_decorators, _, segments_default = _param(segments, "skuName")
    assert allowed - {""} <= _allowed(segments_decorators) and segments_default == "'Standard_ZRS'"
    for module in ("storage", "segmentsStorage"):
        params = _module_params(main, module)
        assert params["skuName"] == "storageSku", module
        assert params["personalDataRetentionDays"] == "personalDataRetentionDays", module
    _, kind, default = _param(main, "personalDataRetentionDays")
    assert (kind, default) == ("int", "30") and _param(storage, "personalDataRetentionDays")[2] == "30"
    assert _param(segments, "personalDataRetentionDays")[2] == "30"
    # Rejects + reports in the run-state account; segment files in the dedicated segments account.
    assert storage.count("daysAfterModificationGreaterThan: personalDataRetentionDays") == 1
    assert segments.count("daysAfterModificationGreaterThan: personalDataRetentionDays") == 1
    values = _azd_values()
    assert values["storageSkuName"] == "STORAGE_SKU"
    assert values["personalDataRetentionDays"] == "PERSONAL_DATA_RETENTION_DAYS"


# Virtual environments and caches: with a .funcignore, azd drops its own Python exclusions (folders holding
# pyvenv.cfg, __pycache__; azure-dev pkg/project/project_utils.go), and .funcignore cannot test for pyvenv.cfg.
FUNCIGNORE_REQUIRED = (".venv/", ".venv*/", "venv/", "env/", "*venv*/", "__pycache__/", "*.pyc")


def _funcignore() -> list[str]:
    lines = (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for pattern in patterns:
        assert not pattern.startswith("!") and "/" not in pattern.rstrip("/"), (
            f".funcignore {pattern!r}: negations and anchored paths need a real gitignore matcher in this test")
    return patterns


def _funcignored(patterns: list[str], path: str) -> bool:
    """gitignore semantics for slash-free patterns: one matches a name at any depth ('x/' only directories),
    and everything below an ignored directory is ignored. `path` ends with '/' for a directory."""
    parts = path.rstrip("/").split("/")
    for depth, part in enumerate(parts):
        is_dir = depth < len(parts) - 1 or path.endswith("/")
        for pattern in patterns:
            if pattern.endswith("/") and not is_dir:
                continue
            if fnmatch.fnmatchcase(part, pattern.rstrip("/")):
                return True
    return False


def test_funcignore_excludes_any_virtualenv_and_keeps_the_app() -> None:
    patterns = _funcignore()
    missing = [pattern for pattern in FUNCIGNORE_REQUIRED if pattern not in patterns]
    assert not missing, f".funcignore lacks {missing}"
    for path in (".venv/", ".venv-3.12/", "venv/", "env/", "myvenv/", "venv311/", "sub/dir/.venv/",
                 "shared/__pycache__/", "shared/__pycache__/engine.cpython-311.pyc", "function_app.pyc",
                 "local.settings.json", "tests/", "node_modules/", ".azure/"):
        assert _funcignored(patterns, path), f".funcignore would package {path}"
    app = ["function_app.py", "host.json", "requirements.txt"] + [
        path.relative_to(ROOT).as_posix()
        for folder in ("shared", "ExportSegment", "OnSchedule")
        for path in (ROOT / folder).rglob("*.py") if "__pycache__" not in path.parts]
    assert len(app) > 10
    dropped = [path for path in app if _funcignored(patterns, path)]
    assert not dropped, f".funcignore would leave the app's own files out of the package: {dropped}"


def test_preprovision_hook_in_azure_yaml() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    hook = re.search(r"^  preprovision:\n((?:    .*\n)+)", text, flags=re.MULTILINE)
    assert hook, "azure.yaml: preprovision hook missing"
    assert hook.group(1).count("run: ./scripts/pre-provision.sh") == 1, "posix"
    assert hook.group(1).count("run: ./scripts/pre-provision.ps1") == 1, "windows (tests/test_infra_hooks.py)"
    script = ROOT / "scripts" / "pre-provision.sh"
    assert script.stat().st_mode & stat.S_IXUSR, "scripts/pre-provision.sh must be executable"
    source = script.read_text(encoding="utf-8")
    assert "Microsoft.App" in source and "Microsoft.EventGrid" in source


def _run_preprovision(tmp_path: Path, az_body: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))
    calls = fake_az(tmp_path, az_body)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "AZURE_SUBSCRIPTION_ID": "sub-123"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "pre-provision.sh")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    return result, calls.read_text().splitlines() if calls.exists() else []


def _providers(*, app: str, others: str, register: str = "true") -> str:
    """A fake az's answers: the subscription, the registration state of Microsoft.App and of the others."""
    return ('case "$*" in\n'
            '  "account show"*) echo sub-123 ;;\n'
            f'  "provider show --namespace Microsoft.App"*) echo {app} ;;\n'
            f'  "provider show"*) echo {others} ;;\n'
            f'  "provider register"*) {register} ;;\n'
            "esac\n")


def test_preprovision_registers_only_missing_providers(tmp_path: Path) -> None:
    result, calls = _run_preprovision(tmp_path, _providers(app="NotRegistered", others="Registered"))
    assert result.returncode == 0, result.stdout + result.stderr
    registered = [line for line in calls if line.startswith("provider register")]
    assert registered == ["provider register --namespace Microsoft.App --subscription sub-123 --wait --output none"]
    assert any(line.startswith("provider show --namespace Microsoft.EventGrid") for line in calls)
    assert all("--subscription sub-123" in line for line in calls), "az must use the azd environment's subscription"


def test_preprovision_explains_what_to_do_when_it_cannot(tmp_path: Path) -> None:
    result, _ = _run_preprovision(tmp_path, _providers(app="NotRegistered", others="NotRegistered",
                                                      register="exit 1"))
    assert result.returncode != 0
    assert "az provider register --namespace Microsoft.App" in result.stderr
    result, calls = _run_preprovision(tmp_path, "exit 1\n")
    assert result.returncode != 0 and "az login" in result.stderr
    assert not any(line.startswith("provider register") for line in calls)


def _doc_sections(text: str) -> dict[int, str]:
    """'## N. title' sections of docs/deploy.md, by N (in file order)."""
    found = list(re.finditer(r"^## (\d+)\. .*$", text, flags=re.MULTILINE))
    return {int(m.group(1)): text[m.start():found[i + 1].start() if i + 1 < len(found) else len(text)]
            for i, m in enumerate(found)}


def test_deploy_docs_walk_a_first_deployment_and_match_the_templates() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    sections = _doc_sections(text)
    assert list(sections) == sorted(sections) and list(sections)[:5] == [1, 2, 3, 4, 5]
    # In order: providers, azd up, the key, a destination, the first file.
    for number, needles in {1: ("az provider register --namespace Microsoft.App",
                                "az provider register --namespace Microsoft.EventGrid"),
                            2: ("azd up", "GRANT_DEPLOYER_DATA_ACCESS false", "azd deploy"),
                            3: ("az keyvault secret set", "Restricted Access", "Full Access to Marketing"),
                            4: ("DESTINATIONS_JSON_BASE64", "azd provision"),
                            5: ("az storage blob upload",)}.items():
        for needle in needles:
            assert needle in sections[number], f"docs/deploy.md step {number} should say {needle!r}"
    undocumented = sorted(value for value in _azd_values().values()
                          if value != "AZURE_ENV_NAME" and f"`{value}`" not in text)
    assert not undocumented, f"azd values main.parameters.json reads but docs/deploy.md does not list: {undocumented}"
    granted = {ROLES[role_id] for role_id in re.findall(r"'([0-9a-f-]{36})'", _code(INFRA / "app" / "rbac.bicep"))}
    assert granted and all(role in text for role in granted), f"docs/deploy.md must name every role: {granted}"
    for sku in _allowed(_param(_code(MAIN), "storageSkuName")[0]) - {""}:
        assert f"`{sku}`" in text, f"docs/deploy.md should say when to pick {sku}"
    for stale in ("FTPS off", "contacts and lists", 'AZURE_PRINCIPAL_ID ""` first'):
        assert stale not in text, f"docs/deploy.md still says {stale!r}"


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
    assert "BlobSource.EVENT_GRID" in args and 'connection="SEGMENTS_STORAGE"' in args
    script = (ROOT / "scripts" / "post-deploy.sh").read_text(encoding="utf-8")
    assert f"BLOB_TRIGGER_FUNCTION:-{name}" in script
    assert "/runtime/webhooks/blobs?functionName=Host.Functions.${function_name}" in script
    assert "systemKeys.blobs_extension" in script
    outputs = set(re.findall(r"^output\s+(\w+)", _code(MAIN), flags=re.MULTILINE))
    used = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]+)", script)) & {
        "RESOURCE_GROUP", "AZURE_FUNCTION_APP_NAME", "AZURE_FUNCTION_APP_HOSTNAME", "EVENT_GRID_SYSTEM_TOPIC_NAME",
        "EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP", "EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID",
        "SEGMENTS_CONTAINER_NAME", "AZURE_KEY_VAULT_NAME", "SENDGRID_SECRET_NAME"}
    assert used and used <= outputs, f"post-deploy.sh reads values main.bicep does not output: {used - outputs}"


# ---------------------------------------------------------------------------------------------- 4. checkov


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
    calls = fake_az(tmp_path, (
        'case "$1 $2" in\n'
        '  "functionapp keys") echo "s3cr3t-blobs-key" ;;\n'
        '  "keyvault secret") echo 0 ;;\n'
        "esac\n"))
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "RESOURCE_GROUP": "rg-test",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_FUNCTION_APP_HOSTNAME": "func-test.azurewebsites.net",
        "EVENT_GRID_SYSTEM_TOPIC_NAME": "evgt-test",
        "SEGMENTS_CONTAINER_NAME": "segments",
        "AZURE_KEY_VAULT_NAME": "kv-test",
        "SENDGRID_SECRET_NAME": "sendgrid-api-key",
        "AZURE_SUBSCRIPTION_ID": "sub-123",
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
    assert all("--subscription sub-123" in line for line in calls.read_text().splitlines()), (
        "every az call must target the azd environment's subscription")
