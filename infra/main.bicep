// Segment-to-SendGrid export app on Azure Functions (Flex Consumption), deployed with `azd up`.
// Everything authenticates with one user-assigned managed identity: no account keys, no connection strings,
// no secrets in app settings. The SendGrid API key lives in Key Vault; only its secret NAME is a parameter.
// Two storage accounts: the app's own (run state, host storage; soft delete on) and the segments account the
// platforms write to - a dedicated one with blob soft delete off (Customer Insights exports need it off), or an
// existing one (segmentsStorageAccountId), on which the deployment only adds role assignments and the Event Grid
// system topic (scripts/post-deploy.sh adds the subscription).
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

@description('Give principalId Key Vault Secrets Officer on the vault (to put the SendGrid key in), Storage Blob Data Contributor on the segments container (to upload segment files) and on the run-state account (to read reports). azd value GRANT_DEPLOYER_DATA_ACCESS; set it to false for a pipeline identity or when people get their roles elsewhere.')
param grantDeployerDataAccess bool = true

// Optional resource names (empty = generated from the environment name).
param resourceGroupName string = ''
param functionAppName string = ''
param appServicePlanName string = ''
param storageAccountName string = ''
param segmentsStorageAccountName string = ''
param keyVaultName string = ''
param identityName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''
param systemTopicName string = ''
param vNetName string = ''

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

@description('Container the customer-data platforms write segment files into (created in the dedicated account; must already exist in an existing one). azd value SEGMENTS_CONTAINER_NAME. Empty = segments.')
param segmentsContainerName string = 'segments'

@description('Resource ID of an existing storage account to watch instead of creating the dedicated segments account (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Storage/storageAccounts/<name>; any resource group or subscription of the tenant). The deployment then only adds role assignments and the Event Grid system topic on it; its settings, lifecycle rules and retention stay its owner\'s. azd value SEGMENTS_STORAGE_ACCOUNT_ID. Empty = a dedicated account.')
param segmentsStorageAccountId string = ''

@description('Resource ID of the Event Grid system topic the segments account already has (an account has at most one): reused instead of creating one. scripts/pre-provision.sh fills it for an existing account. azd value SEGMENTS_SYSTEM_TOPIC_ID. Empty = create the topic.')
param segmentsSystemTopicId string = ''

@description('Object IDs (comma-separated) granted Storage Blob Data Contributor on the segments container: the platforms that write segment files, e.g. the Customer Insights service principal (docs/deploy.md). azd value WRITER_PRINCIPAL_IDS.')
param writerPrincipalIds string = ''

@description('Accept account keys and key-signed SAS on the dedicated segments account, for writers that cannot use Entra ID. Off by default; no effect on an existing account (its settings are its owner\'s) and never on the run-state account. azd value ALLOW_SHARED_KEY_ON_SEGMENTS; see docs/deploy.md for the risk.')
param allowSharedKeyOnSegments bool = false

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

@description('Mail address that gets the alerts (a run ended failed, partial or refused; a destination without a successful run for staleAfterHours). azd value ALERT_EMAIL. Empty = no action group and no alert rules.')
param alertEmail string = ''

@minValue(1)
@maxValue(47)
@description('Hours without a successful run after which a destination alerts. azd value ALERT_STALE_HOURS. Default 26 (a daily refresh plus slack).')
param staleAfterHours int = 26

@description('Private networking as in Microsoft\'s Flex Consumption azd templates: a VNet (a subnet delegated to Microsoft.App/environments for the app\'s outbound integration, one for private endpoints), private endpoints for blob/queue/table of the run-state account, blob of the dedicated segments account and the Key Vault, and public network access Disabled on those. The app\'s own inbound endpoint stays public (Event Grid webhook). azd value VNET_ENABLED; docs/deploy.md "Private networking".')
param vnetEnabled bool = false

@description('Generation of the Key Vault name: empty or 1 = kv-<token>, n = kv-<token>-n. scripts/pre-provision.sh sets it (azd value KEY_VAULT_GENERATION) when the vault of the current generation is soft-deleted and purge-protected, which keeps its name for 90 days after `azd down`.')
@maxLength(4)
param keyVaultGeneration string = ''

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
var segmentsContainer = !empty(segmentsContainerName) ? segmentsContainerName : 'segments'
// The segments account: an existing one (segmentsStorageAccountId), else the dedicated one in the app's group.
// /subscriptions/<sub>/resourceGroups/<rg>/providers/Microsoft.Storage/storageAccounts/<name>: [2], [4], last.
var useExistingSegments = !empty(segmentsStorageAccountId)
var dedicatedSegmentsName = !empty(segmentsStorageAccountName) ? segmentsStorageAccountName : 'stseg${resourceToken}'
var segmentsSubscriptionId = useExistingSegments ? split(segmentsStorageAccountId, '/')[2] : subscription().subscriptionId
var segmentsResourceGroupName = useExistingSegments ? split(segmentsStorageAccountId, '/')[4] : rg.name
var segmentsAccountName = useExistingSegments ? last(split(segmentsStorageAccountId, '/')) : dedicatedSegmentsName
var reuseSystemTopic = !empty(segmentsSystemTopicId)
var newSystemTopicName = !empty(systemTopicName) ? systemTopicName : 'evgt-segments-${resourceToken}'
var generatedKeyVaultName = empty(keyVaultGeneration) || keyVaultGeneration == '1' ? 'kv-${resourceToken}' : 'kv-${resourceToken}-${keyVaultGeneration}'
var vaultName = !empty(keyVaultName) ? keyVaultName : generatedKeyVaultName
var dataPublicNetworkAccess = vnetEnabled ? 'Disabled' : 'Enabled'

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
    runsContainerName: runsContainerName
    deploymentContainerName: deploymentContainerName
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    skuName: storageSku
    personalDataRetentionDays: personalDataRetentionDays
    publicNetworkAccess: dataPublicNetworkAccess
  }
}

// The dedicated segments account, only when no existing account is given.
module segmentsStorage 'app/segments-storage.bicep' = if (empty(segmentsStorageAccountId)) {
  name: 'segments-storage'
  scope: rg
  params: {
    name: dedicatedSegmentsName
    location: location
    tags: tags
    containerName: segmentsContainer
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    skuName: storageSku
    allowSharedKeyAccess: allowSharedKeyOnSegments
    publicNetworkAccess: dataPublicNetworkAccess
    personalDataRetentionDays: personalDataRetentionDays
  }
}

// Role assignments and the Event Grid system topic on the segments account, in its own resource group (and
// subscription): the dedicated account's is the app's group.
module segmentsAccess 'app/segments-access.bicep' = {
  name: 'segments-access-${take(resourceToken, 7)}'
  scope: resourceGroup(segmentsSubscriptionId, segmentsResourceGroupName)
  params: {
    storageAccountName: segmentsAccountName
    containerName: segmentsContainer
    identityPrincipalId: identity.outputs.principalId
    writerPrincipalIds: writerPrincipalIds
    deployerPrincipalId: principalId
    grantDeployerDataAccess: grantDeployerDataAccess
    createSystemTopic: !reuseSystemTopic
    systemTopicName: newSystemTopicName
    tags: tags
  }
  dependsOn: [
    segmentsStorage
  ]
}

module keyVault 'app/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: vaultName
    location: location
    tags: tags
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    publicNetworkAccess: dataPublicNetworkAccess
  }
}

// vnetEnabled: the VNet, and private endpoints (with their DNS zones) for the storage accounts and the vault.
module vnet 'app/vnet.bicep' = if (vnetEnabled) {
  name: 'vnet'
  scope: rg
  params: {
    name: !empty(vNetName) ? vNetName : 'vnet-${resourceToken}'
    location: location
    tags: tags
  }
}

module privateEndpoints 'app/private-endpoints.bicep' = if (vnetEnabled) {
  name: 'private-endpoints'
  scope: rg
  params: {
    location: location
    tags: tags
    vnetId: vnetEnabled ? vnet.outputs.id : ''
    subnetId: vnetEnabled ? vnet.outputs.privateEndpointSubnetId : ''
    storageAccountName: storage.outputs.name
    segmentsStorageAccountName: useExistingSegments ? '' : dedicatedSegmentsName
    keyVaultName: keyVault.outputs.name
  }
  dependsOn: [
    segmentsStorage
  ]
}

// Alert rules on the run records in Application Insights, and the action group that mails alertEmail.
module alerts 'app/alerts.bicep' = if (!empty(alertEmail)) {
  name: 'alerts'
  scope: rg
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    alertEmail: alertEmail
    staleAfterHours: staleAfterHours
    actionGroupName: 'ag-${resourceToken}'
    namePrefix: 'alert-${resourceToken}'
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
    segmentsBlobEndpoint: segmentsAccess.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultUri: keyVault.outputs.uri
    segmentsContainerName: segmentsContainer
    runsContainerName: runsContainerName
    destinationsJson: destinationsDocument
    refreshSchedule: schedule
    sendGridBaseUrl: sendGridBaseUrl
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    virtualNetworkSubnetId: vnetEnabled ? vnet.outputs.appSubnetId : ''
  }
  // The app starts with identity-based connections: let the role assignments (and, with vnetEnabled, the private
  // endpoints it reaches storage through) exist first.
  dependsOn: [
    rbac
    privateEndpoints
  ]
}

// Outputs become azd environment values, read by scripts/post-deploy.sh.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = api.outputs.defaultHostName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output SEGMENTS_STORAGE_ACCOUNT_NAME string = segmentsAccountName
output SEGMENTS_STORAGE_ACCOUNT_RESOURCE_ID string = segmentsAccess.outputs.accountId
output SEGMENTS_CONTAINER_NAME string = segmentsContainer
output RUNS_CONTAINER_NAME string = runsContainerName
// The system topic the postdeploy hook subscribes to: the one created above, or the reused one.
output EVENT_GRID_SYSTEM_TOPIC_NAME string = reuseSystemTopic ? last(split(segmentsSystemTopicId, '/')) : newSystemTopicName
output EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP string = reuseSystemTopic ? split(segmentsSystemTopicId, '/')[4] : segmentsResourceGroupName
output EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID string = reuseSystemTopic ? split(segmentsSystemTopicId, '/')[2] : segmentsSubscriptionId
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output VNET_ENABLED bool = vnetEnabled
output ALERTS_ENABLED bool = !empty(alertEmail)
output AZURE_KEY_VAULT_URL string = keyVault.outputs.uri
output SENDGRID_SECRET_NAME string = secretName
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
