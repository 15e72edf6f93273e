// The app's own storage account (the run-state account): host storage (blob trigger bookkeeping, timer leases,
// queues, the blob trigger's poison queue), the run state (reports, rejects, snapshots, receipts, locks) and the
// deployment package. Entra ID only (shared keys off, never a switch here), no public blob access, TLS 1.2+, soft
// delete for blobs and containers. The segment files live elsewhere: segments-storage.bicep (a dedicated account
// with blob soft delete off, which Customer Insights exports need) or an existing account (segments-access.bicep).
param name string
param location string
param tags object = {}
param runsContainerName string
param deploymentContainerName string
param logAnalyticsWorkspaceId string
@description('(main.bicep vnetEnabled.) Disabled: reachable only through the private endpoints of private-endpoints.bicep (and trusted Azure services).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@description('Queue the HTTP function uses to hand exports to the queue-triggered worker (ExportSegment.EXPORT_QUEUE).')
param exportQueueName string = 'export-requests'

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication (main.bicep storageSkuName, azd value STORAGE_SKU). ZRS needs a region with availability zones, else LRS. The run state holds personal data (snapshots of exported emails, rejected rows): pick a geo-redundant SKU only if a copy in the paired region is acceptable.')
param skuName string = 'Standard_ZRS'

@minValue(1)
@maxValue(365)
@description('Days deleted blobs and containers can be restored.')
param softDeleteDays int = 7

@minValue(1)
@maxValue(3650)
@description('(main.bicep personalDataRetentionDays, azd value PERSONAL_DATA_RETENTION_DAYS.) Days the personal data the app keeps for operators lives: rejected-row files (with their values) and reports in the runs container. The sync state (state/) is kept: incremental sync needs it. Segment files expire in segments-storage.bicep.')
param personalDataRetentionDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: skuName
  }
  //checkov:skip=CKV_AZURE_35:Default action is Deny with vnetEnabled (private endpoints); without it Allow is needed: the Flex app then has no VNet and no fixed IPs; access is Entra ID only (shared keys off).
  //checkov:skip=CKV_AZURE_59:Public access is Disabled with vnetEnabled; without it the public endpoint is needed for the same reason; anonymous access and shared keys are disabled, every request needs an Entra ID token and RBAC.
  //checkov:skip=CKV_AZURE_206:Replication is a parameter (azd value STORAGE_SKU, default ZRS; LRS where the region has no availability zones); geo-replication of personal data is a data-residency decision left to the owner.
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
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
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
  }
}

resource runsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: runsContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Retention: rejected-row values and reports are personal data with no use after a few weeks.
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-rejects-and-reports'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${runsContainerName}/rejects/'
                '${runsContainerName}/reports/'
                '${runsContainerName}/index/' // the run history's entries go with their reports
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

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource exportQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: exportQueueName
}

// Who wrote or deleted which run record, kept in Log Analytics (reads are not logged: cost).
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
output queueEndpoint string = storage.properties.primaryEndpoints.queue
