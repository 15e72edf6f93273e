// Access to the segments account, whichever it is: the dedicated one (segments-storage.bicep) or an existing one
// (main.bicep segmentsStorageAccountId), deployed at that account's resource group (which may be in another
// resource group or subscription than the app). Only role assignments and the Event Grid system topic: on an
// existing account the deployment changes nothing else - no setting, no container, no lifecycle rule, no
// diagnostic setting (tests/test_infra_segments.py checks it). The Event Grid subscription on the topic is made by
// scripts/post-deploy.sh (it needs the app's blobs_extension key).
//  - the app's identity: Storage Blob Data Owner on the segments container (what Microsoft documents for a blob
//    trigger's connection). No queue role here: the trigger's only queue on its connection is the poison queue,
//    and SEGMENTS_STORAGE__queueServiceUri points at the app's own account (api.bicep), where the identity has
//    Storage Queue Data Contributor already (rbac.bicep).
//  - writerPrincipalIds: Storage Blob Data Contributor on the segments container (e.g. Customer Insights).
//  - the deploying user, unless grantDeployerDataAccess is false: Storage Blob Data Contributor on the container.
param storageAccountName string
param containerName string
param identityPrincipalId string

@description('Object IDs (comma-separated) granted Storage Blob Data Contributor on the container: the platforms that write segment files. main.bicep writerPrincipalIds, azd value WRITER_PRINCIPAL_IDS.')
param writerPrincipalIds string = ''

@description('Object ID of the deploying user or pipeline identity.')
param deployerPrincipalId string = ''

@description('Give deployerPrincipalId Storage Blob Data Contributor on the container (to upload segment files by hand).')
param grantDeployerDataAccess bool = true

@description('Create the Event Grid system topic. False when the account already has one (an account has at most one): main.bicep segmentsSystemTopicId.')
param createSystemTopic bool = true

param systemTopicName string
param tags object = {}

var roles = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageBlobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
}

// '' -> [''], and 'a, b' -> ['a', 'b']: empty entries are skipped by the loop's condition. Lower-cased and
// de-duplicated (union with []): the same principal twice would be a second assignment, which ARM refuses.
var writerIds = union(split(toLower(replace(writerPrincipalIds, ' ', '')), ','), [])
var grantDeployer = grantDeployerDataAccess && !empty(deployerPrincipalId)

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

// Must exist: on an existing account the template does not create it (the deployment fails on the role
// assignments below if it does not exist).
resource segmentsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource appBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(segmentsContainer.id, identityPrincipalId, roles.storageBlobDataOwner)
  scope: segmentsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// principalType is left out: a writer may be a service principal, a group or a user. The deployer, when it gets
// the same role below, is skipped here (one assignment per principal, role and scope).
resource writerBlobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for writerId in writerIds: if (!empty(writerId) && !(grantDeployer && writerId == toLower(deployerPrincipalId))) {
  name: guid(segmentsContainer.id, writerId, roles.storageBlobDataContributor)
  scope: segmentsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: writerId
  }
}]

resource deployerBlobDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (grantDeployer) {
  name: guid(segmentsContainer.id, deployerPrincipalId, roles.storageBlobDataContributor)
  scope: segmentsContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataContributor)
    principalId: deployerPrincipalId
  }
}

// The Flex Consumption blob trigger (source=EventGrid) is fed by a subscription on this topic. A system topic
// lives in the region of its source account.
resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (createSystemTopic) {
  name: systemTopicName
  location: storage.location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output accountId string = storage.id
output accountName string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
