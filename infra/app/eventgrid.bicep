// Event Grid system topic on the storage account. The Flex Consumption blob trigger (source=EventGrid) is fed
// by a subscription on this topic; that subscription is created by scripts/post-deploy.sh (azd postdeploy
// hook) because its webhook URL needs the app's `blobs_extension` system key, which exists only after the
// code is deployed and the host has started the blob trigger. Event Grid also validates the webhook when
// the subscription is created, which needs the running function.
param name string
param location string
param tags object = {}
param storageAccountName string

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = systemTopic.name
output id string = systemTopic.id
