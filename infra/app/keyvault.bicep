// Key Vault for the SendGrid API key(s). RBAC authorisation (no access policies), soft delete and purge
// protection. The template never writes a secret: the key is put in after deployment (docs/deploy.md).
param name string
param location string
param tags object = {}
param logAnalyticsWorkspaceId string
@description('(main.bicep vnetEnabled.) Disabled: reachable only through the private endpoints of private-endpoints.bicep ; putting the SendGrid key in then needs a machine in the VNet, or your IP allowed for a moment (docs/deploy.md).')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Enabled'

@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  //checkov:skip=CKV_AZURE_109:Default action is Deny with vnetEnabled (private endpoint); without it Allow is needed: the Flex app then has no VNet and no fixed outbound IPs; every call needs Entra ID + the Key Vault Secrets User role.
  //checkov:skip=CKV_AZURE_189:Public access is Disabled with vnetEnabled; without it the public endpoint is needed for the same reason; access is RBAC-only (no access policies, no shared secrets).
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: publicNetworkAccess == 'Disabled' ? 'Deny' : 'Allow'
    }
  }
}

// Every read of the SendGrid key (and every change) is audited in Log Analytics.
resource keyVaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit-to-log-analytics'
  scope: keyVault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

output id string = keyVault.id
output name string = keyVault.name
output uri string = keyVault.properties.vaultUri
