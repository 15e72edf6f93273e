// Private endpoints of the vnetEnabled option (main.bicep), with their private DNS zones linked to the virtual
// network, so the app reaches its storage and Key Vault over the VNet while their public network access is off:
//  - the run-state account: blob, queue and table (the host's storage, the export queue, the host's diagnostic
//    events in Table storage; Microsoft's Flex templates enable the same three);
//  - the dedicated segments account (when main.bicep creates it): blob. An existing segments account is its
//    owner's: no endpoint is made on it (docs/deploy.md, "Private networking");
//  - the Key Vault: vault.
// One private DNS zone per service, shared by the endpoints of that service.
param location string
param tags object = {}
param vnetId string
param subnetId string
param storageAccountName string
@description('The dedicated segments account; empty when an existing account is used.')
param segmentsStorageAccountName string = ''
param keyVaultName string

// Targets by ID (all in this resource group): no `existing` reference is needed for an optional account.
var storageId = resourceId('Microsoft.Storage/storageAccounts', storageAccountName)
var keyVaultId = resourceId('Microsoft.KeyVault/vaults', keyVaultName)

var storageSuffix = environment().suffixes.storage
// '.vault.azure.net' -> 'privatelink.vaultcore.azure.net' (the Key Vault private link zone of the cloud)
var vaultZoneName = 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
var zoneNames = {
  blob: 'privatelink.blob.${storageSuffix}'
  queue: 'privatelink.queue.${storageSuffix}'
  table: 'privatelink.table.${storageSuffix}'
  vault: vaultZoneName
}
var zoneKeys = [
  'blob'
  'queue'
  'table'
  'vault'
]
// (endpoint name, target resource, group ID = zone key)
var endpoints = concat([
  {
    name: 'pe-${storageAccountName}-blob'
    target: storageId
    group: 'blob'
  }
  {
    name: 'pe-${storageAccountName}-queue'
    target: storageId
    group: 'queue'
  }
  {
    name: 'pe-${storageAccountName}-table'
    target: storageId
    group: 'table'
  }
  {
    name: 'pe-${keyVaultName}-vault'
    target: keyVaultId
    group: 'vault'
  }
], empty(segmentsStorageAccountName) ? [] : [
  {
    name: 'pe-${segmentsStorageAccountName}-blob'
    target: resourceId('Microsoft.Storage/storageAccounts', segmentsStorageAccountName)
    group: 'blob'
  }
])

resource zones 'Microsoft.Network/privateDnsZones@2024-06-01' = [for key in zoneKeys: {
  name: zoneNames[key]
  location: 'global'
  tags: tags
}]

resource zoneLinks 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = [for (key, i) in zoneKeys: {
  parent: zones[i]
  name: 'link-${uniqueString(vnetId)}'
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnetId
    }
  }
}]

resource privateEndpoints 'Microsoft.Network/privateEndpoints@2024-05-01' = [for endpoint in endpoints: {
  name: endpoint.name
  location: location
  tags: tags
  properties: {
    subnet: {
      id: subnetId
    }
    privateLinkServiceConnections: [
      {
        name: endpoint.name
        properties: {
          privateLinkServiceId: endpoint.target
          groupIds: [
            endpoint.group
          ]
        }
      }
    ]
  }
}]

resource zoneGroups 'Microsoft.Network/privateEndpoints/privateDnsZoneGroups@2024-05-01' = [for (endpoint, i) in endpoints: {
  parent: privateEndpoints[i]
  name: 'default'
  properties: {
    privateDnsZoneConfigs: [
      {
        name: endpoint.group
        properties: {
          privateDnsZoneId: resourceId('Microsoft.Network/privateDnsZones', zoneNames[endpoint.group])
        }
      }
    ]
  }
  dependsOn: [
    zones
  ]
}]
