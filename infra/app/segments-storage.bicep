// The dedicated segments account (main.bicep, when segmentsStorageAccountId is empty): the one container the
// customer-data platforms write segment files into, and nothing else. It differs from the run-state account
// (storage.bicep) on purpose:
//  - blob soft delete is OFF: Customer Insights - Data exports fail when soft delete is on for the account
//    ("Export data to an Azure Blob Storage", 2026-07). Container soft delete stays on (it protects the container,
//    not the blobs the exports write). The run state keeps soft delete in its own account.
//  - shared keys stay off unless allowSharedKeyAccess (main.bicep allowSharedKeyOnSegments) opts in, for writers
//    that can only use an account key or a key-signed SAS (docs/deploy.md, "Connect your platform").
// Segment files expire after personalDataRetentionDays; writes and deletes are logged to Log Analytics.
// Role assignments and the Event Grid system topic are in segments-access.bicep (the same for an existing account).
param name string
param location string
param tags object = {}
param containerName string
param logAnalyticsWorkspaceId string
@description('(main.bicep vnetEnabled.) Disabled: reachable only through the private endpoint of private-endpoints.bicep and trusted Azure services: the platforms that write segment files need Private Link too (docs/deploy.md, Private networking).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication (main.bicep storageSkuName, azd value STORAGE_SKU, the same as the run-state account). Segment files hold personal data: pick a geo-redundant SKU only if a copy in the paired region is acceptable.')
param skuName string = 'Standard_ZRS'

@description('(main.bicep allowSharedKeyOnSegments, azd value ALLOW_SHARED_KEY_ON_SEGMENTS.) Accept account-key and key-signed SAS requests on this account. Off by default; see docs/deploy.md for the risk.')
param allowSharedKeyAccess bool = false

@minValue(1)
@maxValue(365)
@description('Days a deleted container can be restored (container soft delete; blob soft delete is off, see above).')
param containerSoftDeleteDays int = 7

@minValue(1)
@maxValue(3650)
@description('(main.bicep personalDataRetentionDays, azd value PERSONAL_DATA_RETENTION_DAYS.) Days after which segment files are deleted.')
param personalDataRetentionDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  //checkov:skip=CKV_AZURE_35:Default action is Deny with vnetEnabled; without it Allow is needed: the platforms writing segments (Customer Insights, warehouses, CDPs) and the Flex app have no fixed IPs; access is Entra ID + RBAC (shared keys off unless explicitly opted in).
  //checkov:skip=CKV_AZURE_59:Public access is Disabled with vnetEnabled (Customer Insights then writes over its Private Link); without it the public endpoint is needed for the same reason (docs/deploy.md).
  //checkov:skip=CKV_AZURE_206:Replication is a parameter (azd value STORAGE_SKU, default ZRS; LRS where the region has no availability zones); geo-replication of personal data is a data-residency decision left to the owner.
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: allowSharedKeyAccess
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    dnsEndpointType: 'Standard'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'
    }
    // Only used when shared keys are on: key-signed SAS valid longer than a day are logged, keys older than 90
    // days are flagged for rotation (Azure Policy / Defender). Neither blocks a request.
    sasPolicy: {
      sasExpirationPeriod: '1.00:00:00'
      expirationAction: 'Log'
    }
    keyPolicy: {
      keyExpirationPeriodInDays: 90
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
        file: {
          enabled: true
          keyType: 'Account'
        }
        queue: {
          enabled: true
          keyType: 'Account'
        }
        table: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    // Off: Customer Insights exports fail on an account with blob soft delete (see the top of this file).
    deleteRetentionPolicy: {
      enabled: false
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: containerSoftDeleteDays
    }
  }
}

resource segmentsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
  }
}

// Retention: segment files are personal data; the export reads each file when it lands (and the scheduled refresh
// the latest one), so weeks-old files have no use.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-old-segment-files'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${containerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: personalDataRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

// Who wrote or deleted which segment file (the platform's identity, or "AccountKey"/"SAS" with shared keys on),
// kept in Log Analytics (reads are not logged: cost).
resource blobDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'blob-to-log-analytics'
  scope: blobService
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
