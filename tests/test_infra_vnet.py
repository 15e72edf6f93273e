"""The vnetEnabled option (infra/main.bicep, app/vnet.bicep, app/private-endpoints.bicep) against what Microsoft's Flex
Consumption azd templates do and what the app connects to.

Read as text like tests/test_infra_settings.py (no Bicep compiler here): the subnet delegation Flex needs, a private
endpoint for every storage service the app's connections use (AzureWebJobsStorage__blob/queue/tableServiceUri,
SEGMENTS_STORAGE__blobServiceUri on the dedicated account) and for Key Vault, each in a private DNS zone linked to
the VNet, public network access off on those resources only when the option is on, and the app's inbound endpoint
kept public for Event Grid.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.test_infra_settings import _code, _module_params

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN = _code(INFRA / "main.bicep")
VNET = _code(INFRA / "app" / "vnet.bicep")
ENDPOINTS = _code(INFRA / "app" / "private-endpoints.bicep")
API = _code(INFRA / "app" / "api.bicep")


def test_the_option_is_off_by_default_and_read_from_the_azd_environment() -> None:
    assert re.search(r"param vnetEnabled bool = false", MAIN)
    parameters = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert parameters["vnetEnabled"]["value"] == "${VNET_ENABLED}"
    for module in ("vnet", "privateEndpoints"):
        assert re.search(rf"module {module} '[^']+' = if \(vnetEnabled\)", MAIN), module


def test_the_app_subnet_is_delegated_to_flex_and_the_site_joins_it() -> None:
    assert "serviceName: 'Microsoft.App/environments'" in VNET
    app_subnet = re.search(r"name: appSubnetName\s*properties: \{(.*?)\n      \}\n", VNET, flags=re.S)
    assert app_subnet and "Microsoft.App/environments" in app_subnet.group(1)
    assert _module_params(MAIN, "api")["virtualNetworkSubnetId"] == "vnetEnabled ? vnet.outputs.appSubnetId : ''"
    assert "virtualNetworkSubnetId: !empty(virtualNetworkSubnetId) ? virtualNetworkSubnetId : null" in API
    # inbound stays public: Event Grid posts to the blob trigger's webhook from outside the VNet
    assert "publicNetworkAccess: 'Enabled'" in API


def test_every_storage_service_the_app_uses_and_the_vault_get_a_private_endpoint() -> None:
    groups = re.findall(r"target: (\w+|resourceId\('Microsoft\.Storage/storageAccounts', segmentsStorageAccountName\))"
                        r"\s*group: '(\w+)'", ENDPOINTS)
    assert sorted(groups) == sorted([("storageId", "blob"), ("storageId", "queue"), ("storageId", "table"),
                                     ("keyVaultId", "vault"),
                                     ("resourceId('Microsoft.Storage/storageAccounts', segmentsStorageAccountName)",
                                      "blob")])
    settings = re.findall(r"(\w+__(?:blob|queue|table)ServiceUri):", API)
    services = {re.search(r"__(\w+)ServiceUri", s).group(1) for s in settings}  # type: ignore[union-attr]
    assert services == {"blob", "queue", "table"}  # each one has an endpoint above
    # the dedicated segments account only: an existing one is its owner's
    assert _module_params(MAIN, "privateEndpoints")["segmentsStorageAccountName"] == \
        "useExistingSegments ? '' : dedicatedSegmentsName"
    # one zone per service, linked to the VNet, used by the endpoints' zone groups
    for zone in ("privatelink.blob.${storageSuffix}", "privatelink.queue.${storageSuffix}",
                 "privatelink.table.${storageSuffix}"):
        assert f"'{zone}'" in ENDPOINTS
    assert "'.vault.', '.vaultcore.'" in ENDPOINTS
    assert "virtualNetworkLinks" in ENDPOINTS and "registrationEnabled: false" in ENDPOINTS
    assert "privateDnsZoneGroups" in ENDPOINTS


def test_public_network_access_is_off_on_storage_and_key_vault_only_with_the_option() -> None:
    assert "var dataPublicNetworkAccess = vnetEnabled ? 'Disabled' : 'Enabled'" in MAIN
    for module in ("storage", "segmentsStorage", "keyVault"):
        assert _module_params(MAIN, module)["publicNetworkAccess"] == "dataPublicNetworkAccess", module
    for name in ("storage.bicep", "segments-storage.bicep", "keyvault.bicep"):
        code = _code(INFRA / "app" / name)
        assert re.search(r"param publicNetworkAccess string = 'Enabled'", code), name
        assert "publicNetworkAccess: publicNetworkAccess" in code, name
        assert "defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'" in code, name
        assert "bypass: 'AzureServices'" in code, name  # Event Grid's system topic, as in Microsoft's templates


def test_the_app_waits_for_its_private_endpoints_and_the_docs_say_what_stays_public() -> None:
    api_call = MAIN[MAIN.index("module api "):]
    depends = re.search(r"dependsOn: \[(.*?)\]", api_call, flags=re.S)
    assert depends and "privateEndpoints" in depends.group(1)
    docs = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = docs[docs.index("### 6.5 Private networking"):docs.index("## 7. ")]
    for needle in ("VNET_ENABLED", "Microsoft.App/environments", "Event Grid", "webhook", "private endpoint"):
        assert needle in section, needle
