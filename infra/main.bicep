// Segment-to-SendGrid export app on Azure Functions (Flex Consumption), deployed with `azd up`.
// Everything authenticates with one user-assigned managed identity: no account keys, no connection strings,
// no secrets in app settings. The SendGrid API key lives in Key Vault; only its secret NAME is a parameter.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used for the resource group name and a unique suffix for the resources.')
param environmentName string

@minLength(1)
@description('Primary location for all resources (a region that offers Flex Consumption).')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object ID of the person or pipeline running the deployment. azd fills it itself with whoever is signed in (AZURE_PRINCIPAL_ID is resolved without reading .env, so emptying it changes nothing); whether it gets data roles is grantDeployerDataAccess.')
param principalId string = ''

@description('Give principalId Key Vault Secrets Officer on the vault (to put the SendGrid key in) and Storage Blob Data Contributor on the storage account (to upload segment files). azd value GRANT_DEPLOYER_DATA_ACCESS; set it to false for a pipeline identity or when people get their roles elsewhere.')
param grantDeployerDataAccess bool = true

// Optional resource names (empty = generated from the environment name).
param resourceGroupName string = ''
param functionAppName string = ''
param appServicePlanName string = ''
param storageAccountName string = ''
param keyVaultName string = ''
param identityName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''
param systemTopicName string = ''

// azd passes an empty string for an azd environment value that is not set: empty means "the default" below.
@description('NCRONTAB (six fields, UTC) of the scheduled refresh of every destination. Empty = 0 0 6 * * *.')
param refreshSchedule string = '0 0 6 * * *'

@maxLength(127)
@description('Name of the Key Vault secret that holds the SendGrid API key (the NAME only, never the value); destinations refer to it in "api_key_secret". Empty = sendgrid-api-key.')
param sendGridSecretName string = 'sendgrid-api-key'

@description('The destinations document (JSON text, see README "Configuration"). Empty = {"destinations": []}.')
param destinationsJson string = '{"destinations": []}'

@description('The destinations document, base64-encoded (how azd passes it: JSON quotes do not survive azd parameter substitution). Wins over destinationsJson when set.')
param destinationsJsonBase64 string = ''

@description('SendGrid API base URL.')
param sendGridBaseUrl string = 'https://api.sendgrid.com'

@description('Container the customer-data platform writes segment files into.')
param segmentsContainerName string = 'segments'

@description('Container for run reports, rejected rows, receipts and sync state.')
param runsContainerName string = 'export-runs'

@minValue(40)
@maxValue(1000)
@description('Upper limit of Flex Consumption instances (also limits parallel calls to SendGrid). Flex accepts 40 to 1000. azd value MAXIMUM_INSTANCE_COUNT.')
param maximumInstanceCount int = 40

@allowed([
  2048
  4096
])
@description('Memory of each Flex Consumption instance in MB. azd value INSTANCE_MEMORY_MB.')
param instanceMemoryMB int = 2048

// '' is what azd passes for an azd value set to an empty string: it means the default, like the settings above.
@allowed([
  ''
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Replication of the storage account (azd value STORAGE_SKU; zonal or not is fixed once the account exists). Standard_ZRS needs a region with availability zones: elsewhere use Standard_LRS. Geo-redundant SKUs copy the personal data in segment files to the paired region. Empty = Standard_ZRS.')
param storageSkuName string = 'Standard_ZRS'

@minValue(1)
@maxValue(3650)
@description('Days after which rejected-row files, reports and segment files are deleted (lifecycle policy). azd value PERSONAL_DATA_RETENTION_DAYS.')
param personalDataRetentionDays int = 30

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var appName = !empty(functionAppName) ? functionAppName : 'func-${resourceToken}'
// Flex Consumption runs the package from this container (one package per app).
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var minimalDestinations = '{"destinations": []}'
var destinationsText = !empty(destinationsJson) ? destinationsJson : minimalDestinations
var destinationsDocument = !empty(destinationsJsonBase64) ? base64ToString(destinationsJsonBase64) : destinationsText
var schedule = !empty(refreshSchedule) ? refreshSchedule : '0 0 6 * * *'
var secretName = !empty(sendGridSecretName) ? sendGridSecretName : 'sendgrid-api-key'
var storageSku = !empty(storageSkuName) ? storageSkuName : 'Standard_ZRS'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : 'rg-${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : 'id-func-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: !empty(logAnalyticsName) ? logAnalyticsName : 'log-${resourceToken}'
    applicationInsightsName: !empty(applicationInsightsName) ? applicationInsightsName : 'appi-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : 'st${resourceToken}'
    location: location
    tags: tags
    segmentsContainerName: segmentsContainerName
    runsContainerName: runsContainerName
    deploymentContainerName: deploymentContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    skuName: storageSku
    personalDataRetentionDays: personalDataRetentionDays
  }
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: !empty(keyVaultName) ? keyVaultName : 'kv-${resourceToken}'
    location: location
    tags: tags
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    keyVaultName: keyVault.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
    grantDeployerDataAccess: grantDeployerDataAccess
  }
}

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    planName: !empty(appServicePlanName) ? appServicePlanName : 'plan-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: keyVault.outputs.uri
    segmentsContainerName: segmentsContainerName
    runsContainerName: runsContainerName
    destinationsJson: destinationsDocument
    refreshSchedule: schedule
    sendGridBaseUrl: sendGridBaseUrl
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
  }
  // The app starts with identity-based connections: let the role assignments exist first.
  dependsOn: [
    rbac
  ]
}

module eventGrid 'app/eventgrid.bicep' = {
  name: 'eventgrid'
  scope: rg
  params: {
    name: !empty(systemTopicName) ? systemTopicName : 'evgt-${resourceToken}'
    location: location
    tags: tags
    storageAccountName: storage.outputs.name
  }
}

// Outputs become azd environment values, read by scripts/post-deploy.sh.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = api.outputs.defaultHostName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SEGMENTS_CONTAINER_NAME string = segmentsContainerName
output RUNS_CONTAINER_NAME string = runsContainerName
output EVENT_GRID_SYSTEM_TOPIC_NAME string = eventGrid.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output SENDGRID_SECRET_NAME string = secretName
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
