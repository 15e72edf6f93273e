"""The segments account in infra/ and the azd hooks (issue: "a segments store the platforms can really write to").

1. Default parameters: the segments container is in a dedicated account with blob soft delete off (Customer
   Insights exports fail with it on), its segment files expire; the run state stays in the app's own account
   with soft delete on and no segments container.
2. With `segmentsStorageAccountId`: the dedicated account is not deployed, and the only module scoped to the
   existing account's resource group declares nothing but role assignments and the Event Grid system topic
   (beside `existing` references to the account, its blob service and the container).
3. The roles there, `writerPrincipalIds`, the shared-key opt-in (dedicated account only, never the run state),
   and the SEGMENTS_STORAGE connection the code and the blob trigger read.
4. The hooks: pre-provision.sh checks an existing account and reuses its own system topic, changing nothing on
   it; post-deploy.sh subscribes on the topic's resource group and subscription.
5. docs/deploy.md "Connect your platform".

The Bicep is read as text, like tests/test_infra_settings.py (its helpers are reused).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from tests.fake_cli import fake_az
from tests.test_infra_settings import (
    INFRA,
    MAIN,
    ROLES,
    ROOT,
    _azd_values,
    _block,
    _code,
    _module_params,
    _param,
    _resources,
    template_app_settings,
)

APP = INFRA / "app"
SEGMENTS_STORAGE = APP / "segments-storage.bicep"
SEGMENTS_ACCESS = APP / "segments-access.bicep"
RUN_STATE = APP / "storage.bicep"

# resource <name> '<type>@<version>' [existing] = [[for ...:] [if (<condition>)] {
_DECLARATION = re.compile(
    r"^resource\s+(?P<name>\w+)\s+'(?P<type>[^'@]+)@[^']+'\s*(?P<existing>existing\s*)?=\s*"
    r"(?P<loop>\[\s*for\b[^:]*:\s*)?(?:if\s*\((?P<condition>.*?)\)\s*)?\{",
    flags=re.MULTILINE | re.DOTALL)


def _declarations(code: str) -> list[dict[str, str | None]]:
    return [match.groupdict() for match in _DECLARATION.finditer(code)]


def _module(code: str, name: str) -> tuple[str, str]:
    """(the text between `module <name>` and its opening brace, the module's body)."""
    match = re.search(rf"^module\s+{name}\s+'[^']+'\s*=\s*([^{{]*)\{{", code, flags=re.MULTILINE)
    assert match, f"module {name} missing"
    return match.group(1), _block(code, match.end() - 1)


def _vars(code: str) -> dict[str, str]:
    return {name: value.strip() for name, value in re.findall(r"^var\s+(\w+)\s*=\s*(.+)$", code, flags=re.MULTILINE)}


def _sub_block(body: str, key: str) -> str:
    match = re.search(rf"\b{key}:\s*\{{", body)
    assert match, f"{key} missing in:\n{body}"
    return _block(body, match.end() - 1)


# ---------------------------------------------------------------------------------------------- 1. default


def test_default_deployment_puts_segments_in_an_account_with_blob_soft_delete_off() -> None:
    main = _code(MAIN)
    condition, _ = _module(main, "segmentsStorage")
    assert re.fullmatch(r"if\s*\(\s*empty\(segmentsStorageAccountId\)\s*\)\s*", condition), (
        "the dedicated segments account is deployed exactly when no existing account is given")
    assert _param(main, "segmentsStorageAccountId")[1:] == ("string", "''"), "default: the dedicated account"
    params = _module_params(main, "segmentsStorage")
    assert params["containerName"] == "segmentsContainer"
    assert _vars(main)["segmentsContainer"] == "!empty(segmentsContainerName) ? segmentsContainerName : 'segments'"

    segments = _code(SEGMENTS_STORAGE)
    (_, blob_service), = _resources(segments, "Microsoft.Storage/storageAccounts/blobServices@")
    assert re.fullmatch(r"\s*enabled:\s*false\s*", _sub_block(blob_service, "deleteRetentionPolicy")), (
        "blob soft delete must be off on the segments account (Customer Insights exports fail with it on)")
    assert re.search(r"enabled:\s*true", _sub_block(blob_service, "containerDeleteRetentionPolicy"))
    (_, container), = _resources(segments, "Microsoft.Storage/storageAccounts/blobServices/containers@")
    assert re.search(r"name:\s*containerName\b", container) and "publicAccess: 'None'" in container
    (_, lifecycle), = _resources(segments, "Microsoft.Storage/storageAccounts/managementPolicies@")
    assert "'${containerName}/'" in lifecycle, "segment files must still expire on the dedicated account"
    assert "daysAfterModificationGreaterThan: personalDataRetentionDays" in lifecycle
    (_, diagnostics), = _resources(segments, "Microsoft.Insights/diagnosticSettings@")
    assert "StorageWrite" in diagnostics and "StorageDelete" in diagnostics

    run_state = _code(RUN_STATE)
    (_, run_blob_service), = _resources(run_state, "Microsoft.Storage/storageAccounts/blobServices@")
    for policy in ("deleteRetentionPolicy", "containerDeleteRetentionPolicy"):
        block = _sub_block(run_blob_service, policy)
        assert re.search(r"enabled:\s*true", block) and "days: softDeleteDays" in block, (
            f"the run state keeps its soft delete ({policy})")
    assert "segmentsContainer" not in run_state, "the run-state account no longer holds a segments container"
    containers = _resources(run_state, "Microsoft.Storage/storageAccounts/blobServices/containers@")
    names = sorted(re.findall(r"^\s*name:\s*(\w+)", body, flags=re.MULTILINE)[0] for _, body in containers)
    assert names == ["deploymentContainerName", "runsContainerName"], names
    (_, run_lifecycle), = _resources(run_state, "Microsoft.Storage/storageAccounts/managementPolicies@")
    prefixes = re.findall(r"'(\$\{[^']*)'", _sub_block(run_lifecycle, "filters"))
    assert prefixes and all(prefix.startswith("${runsContainerName}/") for prefix in prefixes), prefixes
    assert "segmentsContainerName" not in _module_params(main, "storage")


# ---------------------------------------------------------------------------------------------- 2. existing


def test_existing_account_gets_only_role_assignments_and_event_grid() -> None:
    access = _code(SEGMENTS_ACCESS)
    assert not re.search(r"^module\s", access, flags=re.MULTILINE), "no module: everything is visible here"
    allowed_new = {"Microsoft.Authorization/roleAssignments", "Microsoft.EventGrid/systemTopics",
                   "Microsoft.EventGrid/systemTopics/eventSubscriptions"}
    allowed_existing = {"Microsoft.Storage/storageAccounts", "Microsoft.Storage/storageAccounts/blobServices",
                        "Microsoft.Storage/storageAccounts/blobServices/containers"}
    declarations = _declarations(access)
    assert len(declarations) == len(re.findall(r"^resource\s", access, flags=re.MULTILINE)), "a declaration not read"
    for declaration in declarations:
        allowed = allowed_existing if declaration["existing"] else allowed_new
        assert declaration["type"] in allowed, (
            f"{declaration['name']} ({declaration['type']}) would change the segments account: only role "
            "assignments and Event Grid are allowed there")
    made = {d["type"] for d in declarations if not d["existing"]}
    assert made == {"Microsoft.Authorization/roleAssignments", "Microsoft.EventGrid/systemTopics"}
    topic = next(d for d in declarations if d["type"] == "Microsoft.EventGrid/systemTopics")
    assert topic["condition"] == "createSystemTopic", "an account's existing topic is reused, not duplicated"

    main = _code(MAIN)
    variables = _vars(main)
    assert variables["useExistingSegments"] == "!empty(segmentsStorageAccountId)"
    assert variables["segmentsSubscriptionId"] == (
        "useExistingSegments ? split(segmentsStorageAccountId, '/')[2] : subscription().subscriptionId")
    assert variables["segmentsResourceGroupName"] == (
        "useExistingSegments ? split(segmentsStorageAccountId, '/')[4] : rg.name")
    assert variables["segmentsAccountName"].startswith("useExistingSegments ? last(split(segmentsStorageAccountId,")
    _, body = _module(main, "segmentsAccess")
    assert re.search(r"^\s*scope:\s*resourceGroup\(segmentsSubscriptionId,\s*segmentsResourceGroupName\)\s*$", body,
                     flags=re.MULTILINE), "deployed at the segments account's own resource group and subscription"
    params = _module_params(main, "segmentsAccess")
    assert params["storageAccountName"] == "segmentsAccountName"
    assert params["createSystemTopic"] == "!reuseSystemTopic"
    assert variables["reuseSystemTopic"] == "!empty(segmentsSystemTopicId)"

    # Nothing else of main.bicep reaches another resource group: one resource (the app's group), and every other
    # module is scoped to it.
    assert [d["type"] for d in _declarations(main)] == ["Microsoft.Resources/resourceGroups"]
    modules = re.findall(r"^module\s+(\w+)\s", main, flags=re.MULTILINE)
    assert "segmentsAccess" in modules and "segmentsStorage" in modules
    for module in set(modules) - {"segmentsAccess"}:
        _, module_body = _module(main, module)
        assert re.search(r"^\s*scope:\s*rg\s*$", module_body, flags=re.MULTILINE), f"module {module}: scope rg"
    # The existing account's ID is only read to find it (the vars above) and to skip the dedicated account.
    uses = [line.strip() for line in main.splitlines() if "segmentsStorageAccountId" in line]
    assert all(line.startswith(("param ", "var ", "module segmentsStorage ")) for line in uses), uses


def test_roles_on_the_segments_container() -> None:
    access = _code(SEGMENTS_ACCESS)
    role_ids = dict(re.findall(r"^\s*(\w+):\s*'([0-9a-f-]{36})'", access, flags=re.MULTILINE))
    assert {ROLES[role_id] for role_id in role_ids.values()} == {
        "Storage Blob Data Owner", "Storage Blob Data Contributor"}, "no queue, table or broad role on the account"
    granted = set()
    conditions = {d["name"]: (d["loop"], d["condition"]) for d in _declarations(access)}
    for name, body in _resources(access, "Microsoft.Authorization/roleAssignments@"):
        role = re.search(r"roleDefinitionId:[^\n]*roles\.(\w+)", body)
        principal = re.search(r"principalId:\s*(\w+)", body)
        assert role and principal and re.search(r"^\s*scope:\s*segmentsContainer\s*$", body, flags=re.MULTILINE), (
            f"{name}: scoped to the segments container, not the account")
        assert re.search(r"name:\s*guid\(segmentsContainer\.id,\s*" + principal.group(1), body)
        granted.add((principal.group(1), ROLES[role_ids[role.group(1)]], conditions[name]))
    assert granted == {
        ("identityPrincipalId", "Storage Blob Data Owner", (None, None)),
        ("writerId", "Storage Blob Data Contributor",
         ("[for writerId in writerIds: ",
          "!empty(writerId) && !(grantDeployer && writerId == toLower(deployerPrincipalId))")),
        ("deployerPrincipalId", "Storage Blob Data Contributor", (None, "grantDeployer")),
    }
    variables = _vars(access)
    assert variables["writerIds"] == "union(split(toLower(replace(writerPrincipalIds, ' ', '')), ','), [])"
    assert variables["grantDeployer"] == "grantDeployerDataAccess && !empty(deployerPrincipalId)"
    assert re.search(r"^\s*principalType:\s*'ServicePrincipal'", access, flags=re.MULTILINE), "the app's identity"

    main = _code(MAIN)
    assert _param(main, "writerPrincipalIds")[1:] == ("string", "''")
    values = _azd_values()
    assert values["writerPrincipalIds"] == "WRITER_PRINCIPAL_IDS"
    params = _module_params(main, "segmentsAccess")
    assert params["writerPrincipalIds"] == "writerPrincipalIds"
    assert params["identityPrincipalId"] == "identity.outputs.principalId"
    assert params["deployerPrincipalId"] == "principalId"
    assert params["grantDeployerDataAccess"] == "grantDeployerDataAccess"


def test_writer_ids_split_like_the_template() -> None:
    """The Bicep expression, evaluated by hand: spaces and empty entries do not make role assignments."""
    def writers(value: str, deployer: str = "", grant: bool = True) -> list[str]:
        # union(split(toLower(replace(writerPrincipalIds, ' ', '')), ','), []): lower-cased, each once
        ids = list(dict.fromkeys(value.replace(" ", "").lower().split(",")))
        return [i for i in ids if i and not (grant and deployer and i == deployer.lower())]

    assert writers("") == []
    assert writers("aaa, bbb,,ccc ") == ["aaa", "bbb", "ccc"]
    assert writers("aaa,me", deployer="me") == ["aaa"]
    assert writers("aaa,me", deployer="me", grant=False) == ["aaa", "me"]
    assert writers("AAA,aaa,ME", deployer="me") == ["aaa"]  # one assignment per principal, whatever the case


# ---------------------------------------------------------------------------------------------- 3. shared keys


def test_shared_key_is_an_explicit_opt_in_on_the_dedicated_account_only() -> None:
    main = _code(MAIN)
    assert _param(main, "allowSharedKeyOnSegments")[1:] == ("bool", "false")
    assert _azd_values()["allowSharedKeyOnSegments"] == "ALLOW_SHARED_KEY_ON_SEGMENTS"
    uses = [line.strip() for line in main.splitlines() if "allowSharedKeyOnSegments" in line]
    assert uses == ["param allowSharedKeyOnSegments bool = false",
                    "allowSharedKeyAccess: allowSharedKeyOnSegments"], uses
    assert _module_params(main, "segmentsStorage")["allowSharedKeyAccess"] == "allowSharedKeyOnSegments"
    segments = _code(SEGMENTS_STORAGE)
    assert _param(segments, "allowSharedKeyAccess")[1:] == ("bool", "false")
    assert "allowSharedKeyAccess: allowSharedKeyAccess" in segments
    run_state = _code(RUN_STATE)
    assert re.findall(r"allowSharedKeyAccess:\s*(\S+)", run_state) == ["false"], "never on the run-state account"
    for path in sorted(INFRA.rglob("*.bicep")):
        if path not in (MAIN, SEGMENTS_STORAGE, RUN_STATE):
            assert "allowSharedKey" not in _code(path), f"{path.name}: shared keys are the two accounts' business"


# ---------------------------------------------------------------------------------------------- the connection


def test_segments_connection_is_identity_based_and_points_at_the_segments_account() -> None:
    api = _code(APP / "api.bicep")
    settings = template_app_settings()
    assert "SEGMENTS_STORAGE" not in settings, "the connection-string form is local only"
    expected = {
        "SEGMENTS_STORAGE__blobServiceUri": r"segmentsBlobEndpoint",
        "SEGMENTS_STORAGE__credential": r"'managedidentity'",
        "SEGMENTS_STORAGE__clientId": r"identityClientId",
        # The poison queue stays in the app's own account (where the identity has Storage Queue Data Contributor).
        "SEGMENTS_STORAGE__queueServiceUri": r"storage\.properties\.primaryEndpoints\.queue",
    }
    for name, value in expected.items():
        assert name in settings, f"{name} not set"
        assert re.search(rf"^\s*{name}:\s*{value}\s*$", api, flags=re.MULTILINE), f"{name} should be {value}"
    (_, run_state_ref), = [(n, b) for n, b in _resources(api, "Microsoft.Storage/storageAccounts@") if n == "storage"]
    assert re.search(r"name:\s*storageAccountName\b", run_state_ref)
    main = _code(MAIN)
    params = _module_params(main, "api")
    assert params["segmentsBlobEndpoint"] == "segmentsAccess.outputs.blobEndpoint"
    assert params["storageAccountName"] == "storage.outputs.name"
    assert re.search(r"^output\s+blobEndpoint\s+string\s*=\s*storage\.properties\.primaryEndpoints\.blob\s*$",
                     _code(SEGMENTS_ACCESS), flags=re.MULTILINE)
    rbac = _code(APP / "rbac.bicep")
    assert re.search(r"resource appQueueDataContributor[^{]*\{[^}]*scope:\s*storage\b", rbac, flags=re.DOTALL)
    source = (ROOT / "ExportSegment" / "__init__.py").read_text(encoding="utf-8")
    trigger = re.search(r"@bp\.blob_trigger\(([^)]*)\)", source)
    assert trigger and 'connection="SEGMENTS_STORAGE"' in trigger.group(1), "the blob trigger must watch segments"


def test_outputs_name_the_segments_account_and_the_topic_the_hook_uses() -> None:
    main = _code(MAIN)
    outputs = dict(re.findall(r"^output\s+(\w+)\s+string\s*=\s*(.+)$", main, flags=re.MULTILINE))
    assert outputs["SEGMENTS_STORAGE_ACCOUNT_NAME"] == "segmentsAccountName"
    assert outputs["SEGMENTS_STORAGE_ACCOUNT_RESOURCE_ID"] == "segmentsAccess.outputs.accountId"
    assert outputs["SEGMENTS_CONTAINER_NAME"] == "segmentsContainer"
    assert outputs["EVENT_GRID_SYSTEM_TOPIC_NAME"] == (
        "reuseSystemTopic ? last(split(segmentsSystemTopicId, '/')) : newSystemTopicName")
    assert outputs["EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP"] == (
        "reuseSystemTopic ? split(segmentsSystemTopicId, '/')[4] : segmentsResourceGroupName")
    assert outputs["EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID"] == (
        "reuseSystemTopic ? split(segmentsSystemTopicId, '/')[2] : segmentsSubscriptionId")
    values = _azd_values()
    assert values["segmentsStorageAccountId"] == "SEGMENTS_STORAGE_ACCOUNT_ID"
    assert values["segmentsSystemTopicId"] == "SEGMENTS_SYSTEM_TOPIC_ID"
    assert values["segmentsContainerName"] == "SEGMENTS_CONTAINER_NAME"
    assert _module_params(main, "segmentsAccess")["systemTopicName"] == "newSystemTopicName"
    # Not the name of the earlier topic on the run-state account (a topic's source cannot change).
    assert "'evgt-segments-${resourceToken}'" in _vars(main)["newSystemTopicName"]


# ---------------------------------------------------------------------------------------------- 4. hooks

SEG_SUB = "11111111-2222-3333-4444-555555555555"
ACCOUNT_ID = f"/subscriptions/{SEG_SUB}/resourceGroups/rg-data/providers/Microsoft.Storage/storageAccounts/stdata"
TOPIC_ID = f"/subscriptions/{SEG_SUB}/resourceGroups/rg-events/providers/Microsoft.EventGrid/systemTopics/owner-topic"


def _run_preprovision(tmp_path: Path, env: dict[str, str], *, topics: str = "", exists: str = "true",
                      soft_delete: str = "false") -> tuple[subprocess.CompletedProcess[str], list[str], list[str]]:
    work = Path(tempfile.mkdtemp(dir=tmp_path))
    calls, azd_calls = work / "az.log", work / "azd.log"
    (work / "topics.tsv").write_text(topics, encoding="utf-8")
    az = work / "az"
    az.write_text(
        "#!/usr/bin/env bash\n"
        f'printf "%s\\n" "$*" >> "{calls}"\n'
        'case "$*" in\n'
        '  "account show"*) echo sub-app ;;\n'
        '  "provider show"*) echo Registered ;;\n'
        '  "storage account show"*) echo "$4" ;;\n'
        f'  "storage container-rm exists"*) echo {exists} ;;\n'
        f'  "storage account blob-service-properties show"*) echo {soft_delete} ;;\n'
        f'  "eventgrid system-topic list"*) cat "{work / "topics.tsv"}" ;;\n'
        "esac\n", encoding="utf-8")
    azd = work / "azd"
    azd.write_text(f'#!/usr/bin/env bash\nprintf "%s|\\n" "$*" >> "{azd_calls}"\n', encoding="utf-8")
    for tool in (az, azd):
        tool.chmod(0o755)
    full_env = {"PATH": f"{work}:/usr/bin:/bin", "AZURE_SUBSCRIPTION_ID": "sub-app", "AZURE_ENV_NAME": "prod", **env}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "pre-provision.sh")], env=full_env, capture_output=True,
                            text=True, timeout=60, check=False)
    read = lambda path: path.read_text().splitlines() if path.exists() else []  # noqa: E731
    return result, read(calls), read(azd_calls)


READ_ONLY_CALLS = ("storage account show ", "storage container-rm exists ",
                   "storage account blob-service-properties show ", "eventgrid system-topic list ")


def _assert_read_only(calls: list[str]) -> None:
    for line in calls:
        if line.startswith(("storage", "eventgrid")):
            assert line.startswith(READ_ONLY_CALLS), f"the hook must not change the segments account: {line}"


def test_preprovision_reuses_the_existing_accounts_own_topic(tmp_path: Path) -> None:
    # The owner's topic, in another group; the source's case differs from the ID given (ARM IDs ignore case).
    source = ACCOUNT_ID.replace("resourceGroups/rg-data", "resourcegroups/RG-DATA")
    topics = f"/subscriptions/{SEG_SUB}/resourceGroups/x/providers/Microsoft.EventGrid/systemTopics/other\t/x\t\n" \
             f"{TOPIC_ID}\t{source}\t\n"
    result, calls, azd_calls = _run_preprovision(tmp_path, {"SEGMENTS_STORAGE_ACCOUNT_ID": ACCOUNT_ID}, topics=topics)
    assert result.returncode == 0, result.stdout + result.stderr
    assert azd_calls == [f"env set SEGMENTS_SYSTEM_TOPIC_ID {TOPIC_ID}|"]
    assert "reusing the account's Event Grid system topic owner-topic" in result.stdout
    assert any(line.startswith("eventgrid system-topic list") and f"--subscription {SEG_SUB}" in line
               for line in calls)
    assert any(line.startswith("provider show --namespace Microsoft.EventGrid") and SEG_SUB in line for line in calls)
    assert not any(line.startswith("provider register") for line in calls)
    _assert_read_only(calls)


OWN_TOPIC_ID = (f"/subscriptions/{SEG_SUB}/resourceGroups/rg-data/providers/Microsoft.EventGrid/systemTopics/"
                "evgt-segments-abc")


def test_preprovision_leaves_the_templates_own_topic_to_the_template(tmp_path: Path) -> None:
    topics = f"{OWN_TOPIC_ID}\t{ACCOUNT_ID}\tprod\n"
    env = {"SEGMENTS_STORAGE_ACCOUNT_ID": ACCOUNT_ID}
    result, _, azd_calls = _run_preprovision(tmp_path, env, topics=topics)
    assert result.returncode == 0 and azd_calls == [], result.stdout + result.stderr
    # a topic an earlier version made (evgt-<token>, tagged with this environment) is reused, not made twice
    old_topic = OWN_TOPIC_ID.replace("evgt-segments-abc", "evgt-abc")
    result, _, azd_calls = _run_preprovision(tmp_path, env, topics=f"{old_topic}\t{ACCOUNT_ID}\tprod\n")
    assert result.returncode == 0 and azd_calls == [f"env set SEGMENTS_SYSTEM_TOPIC_ID {old_topic}|"]
    result, _, azd_calls = _run_preprovision(tmp_path, {**env, "SEGMENTS_SYSTEM_TOPIC_ID": OWN_TOPIC_ID},
                                             topics=topics)
    assert result.returncode == 0 and azd_calls == ['env set SEGMENTS_SYSTEM_TOPIC_ID |'], "a stale reuse is cleared"
    result, _, azd_calls = _run_preprovision(tmp_path, env, topics="")
    assert result.returncode == 0 and azd_calls == [] and "the template creates one" in result.stdout


def test_preprovision_checks_the_existing_account(tmp_path: Path) -> None:
    env = {"SEGMENTS_STORAGE_ACCOUNT_ID": ACCOUNT_ID, "SEGMENTS_CONTAINER_NAME": "exports"}
    result, calls, _ = _run_preprovision(tmp_path, env, exists="false")
    assert result.returncode != 0 and "no container 'exports'" in result.stderr
    assert any(line.startswith("storage container-rm exists") and "--name exports" in line for line in calls)
    result, _, _ = _run_preprovision(tmp_path, {"SEGMENTS_STORAGE_ACCOUNT_ID": "stdata"})
    assert result.returncode != 0 and "not a storage account resource ID" in result.stderr
    result, calls, _ = _run_preprovision(tmp_path, env, soft_delete="true")
    assert result.returncode == 0 and "blob soft delete is on for stdata" in result.stdout
    _assert_read_only(calls)


def test_preprovision_without_an_existing_account_clears_a_leftover_topic(tmp_path: Path) -> None:
    result, calls, azd_calls = _run_preprovision(tmp_path, {"SEGMENTS_SYSTEM_TOPIC_ID": TOPIC_ID})
    assert result.returncode == 0, result.stdout + result.stderr
    assert azd_calls == ['env set SEGMENTS_SYSTEM_TOPIC_ID |']
    assert not any(line.startswith(("storage", "eventgrid")) for line in calls)
    result, calls, azd_calls = _run_preprovision(tmp_path, {})
    assert result.returncode == 0 and azd_calls == []


def test_postdeploy_subscribes_on_the_topic_of_an_account_elsewhere(tmp_path: Path) -> None:
    calls = fake_az(tmp_path, (
        'case "$1 $2" in\n'
        '  "functionapp keys") echo "s3cr3t-blobs-key" ;;\n'
                "esac\n"))
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "RESOURCE_GROUP": "rg-app",
        "AZURE_FUNCTION_APP_NAME": "func-test",
        "AZURE_FUNCTION_APP_HOSTNAME": "func-test.azurewebsites.net",
        "EVENT_GRID_SYSTEM_TOPIC_NAME": "owner-topic",
        "EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP": "rg-events",
        "EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID": SEG_SUB,
        "SEGMENTS_CONTAINER_NAME": "exports",
        "AZURE_SUBSCRIPTION_ID": "sub-app",
    }
    result = subprocess.run(["bash", str(ROOT / "scripts" / "post-deploy.sh")], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    lines = calls.read_text().splitlines()
    create = next(line for line in lines if line.startswith("eventgrid "))
    for part in ("--resource-group rg-events", "--system-topic-name owner-topic", f"--subscription {SEG_SUB}",
                 "--name segments-func-test", "--subject-begins-with /blobServices/default/containers/exports/blobs/"):
        assert part in create, f"{part} missing: {create}"
    assert "sub-app" not in create
    assert all("--subscription sub-app" in line for line in lines if not line.startswith("eventgrid ")), (
        "the app's own calls stay on the azd environment's subscription")


# ---------------------------------------------------------------------------------------------- 5. docs


def test_deploy_docs_connect_your_platform() -> None:
    text = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    match = re.search(r"^## \d+\. Connect your platform$(.*?)^## ", text, flags=re.MULTILINE | re.DOTALL)
    assert match, "docs/deploy.md needs a numbered 'Connect your platform' section"
    section = match.group(1)
    for needle in (
        "soft delete", "SEGMENTS_STORAGE_ACCOUNT_ID", "SEGMENTS_CONTAINER_NAME", "owner",  # where segments live
        "WRITER_PRINCIPAL_IDS", "az role assignment create", "Storage Blob Data Contributor",  # writers
        "0bfc4568-a4ba-4c58-bd3e-5d3e76bd7fff", "az ad sp create --id", "model.json",  # Customer Insights
        "CustomerInsights_<instanceID>/<ExportDestinationName>/<Table>/",  # the prefixes to configure
        "az storage blob upload --auth-mode login",  # a warehouse job
        "--as-user", "user delegation SAS",  # a SAS without shared keys
        "ALLOW_SHARED_KEY_ON_SEGMENTS", "full control of the whole account",  # the opt-in and its risk
        "Private Link", "public network access", "vnetEnabled",  # Private Link and the future option
    ):
        assert needle in section, f"'Connect your platform' should say {needle!r}"
    assert "SEGMENTS_SYSTEM_TOPIC_ID" in text and "az eventgrid system-topic list" in text, "topic reuse explained"
