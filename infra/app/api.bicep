// The Function App on the Flex Consumption plan (FC1), Python 3.11, running as the user-assigned identity.
// Two storage connections: AzureWebJobsStorage (host + run state, the app's own account) and SEGMENTS_STORAGE
// (the segments account, dedicated or existing).
// App settings are the ones declared in shared/config/settings.py (tests/test_infra_settings.py compares them).
// On Flex the runtime comes from functionAppConfig, so FUNCTIONS_WORKER_RUNTIME, FUNCTIONS_EXTENSION_VERSION,
// WEBSITE_RUN_FROM_PACKAGE, content-share settings and WEBSITE_TIME_ZONE are not (and must not be) set.
// siteConfig holds only what Flex accepts: Flex sites refuse ftpsState, use32BitWorkerProcess,
// preWarmedInstanceCount, netFrameworkVersion, functionsRuntimeScaleMonitoringEnabled, linuxFxVersion and
// functionAppScaleLimit with ARM error 51021 (runtime and scale live in functionAppConfig instead); the list and
// its sources are in tests/test_infra_settings.py.
param name string
param planName string
param location string
param tags object = {}
param identityId string
param identityClientId string
@description('The run-state account (AzureWebJobsStorage, the runs container, the deployment package).')
param storageAccountName string
@description('Blob endpoint of the segments account (dedicated or existing): the SEGMENTS_STORAGE connection.')
param segmentsBlobEndpoint string
param deploymentContainerName string
param applicationInsightsName string
param keyVaultUri string
param segmentsContainerName string
param runsContainerName string
param destinationsJson string
param refreshSchedule string
param sendGridBaseUrl string
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40
param instanceMemoryMB int = 2048
@description('(main.bicep vnetEnabled.) Subnet delegated to Microsoft.App/environments for outbound VNet integration; empty = none.')
param virtualNetworkSubnetId string = ''

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  //checkov:skip=CKV_AZURE_225:Zone redundancy on Flex exists only in some regions and keeps 2+ billed always-ready instances; a zonal outage delays exports (Event Grid retries for 24 h; the scheduled refresh exports each destination's latest file).
  properties: {
    reserved: true
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  //checkov:skip=CKV_AZURE_222:Event Grid delivers blob events to the public webhook endpoint (Event Grid cannot deliver to a private endpoint, so inbound stays public with vnetEnabled too); HTTP functions need function keys.
  //checkov:skip=CKV_AZURE_17:Event Grid webhook deliveries cannot present client certificates; HTTP functions are protected by function keys instead.
  //checkov:skip=CKV_AZURE_212:Flex Consumption scales to zero by design; always-ready instances would only add cost for a batch export app.
  //checkov:skip=CKV_AZURE_213:Flex Consumption does not support the App Service health check feature; failures surface in Application Insights.
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  //checkov:skip=CKV_AZURE_78:Flex Consumption rejects siteConfig.ftpsState (ARM error 51021); FTP stays off through the basicPublishingCredentialsPolicies 'ftp' below (allow: false), and azd deploys with an Entra ID token.
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    // Stays Enabled with vnetEnabled too: Event Grid delivers blob events to the public webhook (docs/deploy.md).
    publicNetworkAccess: 'Enabled'
    virtualNetworkSubnetId: !empty(virtualNetworkSubnetId) ? virtualNetworkSubnetId : null
    siteConfig: {
      minTlsVersion: '1.2'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource appSettings 'config' = {
    name: 'appsettings'
    properties: {
      // Host storage and the blob/queue triggers (connection "AzureWebJobsStorage"): identity-based.
      AzureWebJobsStorage__credential: 'managedidentity'
      AzureWebJobsStorage__clientId: identityClientId
      AzureWebJobsStorage__blobServiceUri: storage.properties.primaryEndpoints.blob
      AzureWebJobsStorage__queueServiceUri: storage.properties.primaryEndpoints.queue
      // The host writes its diagnostic events to Table storage (as in Microsoft's Flex sample); our code does not.
      AzureWebJobsStorage__tableServiceUri: storage.properties.primaryEndpoints.table
      // The segments account (connection "SEGMENTS_STORAGE": the blob trigger, and the code's reads of segment
      // files on every path), identity-based like the host's. Never the connection-string form SEGMENTS_STORAGE.
      SEGMENTS_STORAGE__blobServiceUri: segmentsBlobEndpoint
      SEGMENTS_STORAGE__credential: 'managedidentity'
      SEGMENTS_STORAGE__clientId: identityClientId
      // A blob trigger connection given as blobServiceUri needs a queueServiceUri too: the extension's only queue on
      // it is the poison queue (webjobs-blobtrigger-poison). It stays in the app's own account, so nothing is
      // created on an existing segments account and the identity needs no queue role there (segments-access.bicep).
      SEGMENTS_STORAGE__queueServiceUri: storage.properties.primaryEndpoints.queue
      // Telemetry through Entra ID (local auth is off on Application Insights).
      APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
      APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
      // The app's own settings (shared/config/settings.py).
      SEGMENTS_CONTAINER: segmentsContainerName
      RUNS_CONTAINER: runsContainerName
      DESTINATIONS_JSON: destinationsJson
      KEY_VAULT_URL: keyVaultUri
      AZURE_CLIENT_ID: identityClientId
      REFRESH_SCHEDULE: refreshSchedule
      SENDGRID_BASE_URL: sendGridBaseUrl
    }
  }

  // No basic-auth (publishing profile) deployments: azd deploys with an Entra ID token. 'ftp' off is also what
  // keeps FTP off, since Flex does not accept siteConfig.ftpsState.
  resource ftpCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
