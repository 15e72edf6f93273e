# azd preprovision hook for Windows (azure.yaml `windows:`), the same steps as scripts/pre-provision.sh, which
# documents them: register Microsoft.App and Microsoft.EventGrid; move the Key Vault name to its next generation
# (KEY_VAULT_GENERATION) when the current one is soft-deleted and purge-protected; check an existing segments
# account (SEGMENTS_STORAGE_ACCOUNT_ID) read-only and record its Event Grid system topic (SEGMENTS_SYSTEM_TOPIC_ID).
# PowerShell 7 (pwsh) or Windows PowerShell 5.1; needs the Azure CLI (`az login`) and azd.
# Keep the two scripts in step: tests/test_infra_hooks.py compares the az commands and azd values they use.
# Continue: failures are read from $LASTEXITCODE (Windows PowerShell 5.1 turns a native command's redirected stderr
# into a terminating error under 'Stop').
$ErrorActionPreference = 'Continue'

function Fail([string]$message) {
    [Console]::Error.WriteLine("pre-provision: $message")
    exit 1
}

function Set-AzdValue([string]$name, [string]$value) {
    if (Get-Command azd -ErrorAction SilentlyContinue) {
        & azd env set $name $value | Out-Null
        if ($LASTEXITCODE -ne 0) { Fail "could not run: azd env set $name `"$value`"" }
    } else {
        Write-Host "pre-provision: azd not found: run  azd env set $name `"$value`"  before azd provision"
    }
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail "the Azure CLI (az) is needed: https://aka.ms/azure-cli" }

$subscription = @()
if ($env:AZURE_SUBSCRIPTION_ID) { $subscription = @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }

az account show @subscription --query id -o tsv 2>$null | Out-Null
if ($LASTEXITCODE -ne 0) {
    $shown = if ($env:AZURE_SUBSCRIPTION_ID) { $env:AZURE_SUBSCRIPTION_ID } else { '(az default)' }
    Fail "az cannot see subscription ${shown}: sign in with ``az login`` (azd and az sign in separately)"
}

$providers = if ($env:REQUIRED_PROVIDERS) { $env:REQUIRED_PROVIDERS -split '\s+' } else { @('Microsoft.App', 'Microsoft.EventGrid') }
foreach ($namespace in $providers) {
    if (-not $namespace) { continue }
    $state = az provider show --namespace $namespace @subscription --query registrationState -o tsv 2>$null
    if ($state -eq 'Registered') {
        Write-Host "pre-provision: resource provider $namespace is registered"
        continue
    }
    Write-Host "pre-provision: registering resource provider $namespace (state: $(if ($state) { $state } else { 'unknown' })); this takes a minute or two"
    az provider register --namespace $namespace @subscription --wait --output none
    if ($LASTEXITCODE -ne 0) {
        Fail "could not register ${namespace}: someone with Owner or Contributor on the subscription must run ``az provider register --namespace $namespace`` (docs/deploy.md, step 1)"
    }
    Write-Host "pre-provision: resource provider $namespace is registered"
}

# ---------------------------------------------------------------------------------------------- Key Vault name
$generation = if ($env:KEY_VAULT_GENERATION) { $env:KEY_VAULT_GENERATION } else { '1' }
if ($generation -notmatch '^[0-9]{1,4}$') { Fail "KEY_VAULT_GENERATION must be a number (1, 2, ...), not '$generation'" }
if (-not $env:AZURE_ENV_NAME) {
    Write-Host "pre-provision: AZURE_ENV_NAME is not set: not checking for a soft-deleted Key Vault of this environment"
} else {
    # JSON, not a JMESPath query with quotes: Windows PowerShell and az.cmd disagree on passing those.
    $deleted = az keyvault list-deleted --resource-type vault @subscription -o json 2>$null
    if ($LASTEXITCODE -ne 0) {
        Write-Host "pre-provision: WARNING: could not list soft-deleted Key Vaults (az keyvault list-deleted). If azd provision fails because a vault of that name exists in the deleted state (after azd down), run azd env set KEY_VAULT_GENERATION $([int]$generation + 1) and provision again"
    } else {
        $location = ("$env:AZURE_LOCATION" -replace ' ', '').ToLowerInvariant()
        $taken = ''; $base = ''; $highest = [int]$generation; $until = ''
        $items = if ("$deleted".Trim()) { $deleted | Out-String | ConvertFrom-Json } else { @() }
        foreach ($item in $items) {
            if (-not $item -or -not $item.properties) { continue }
            $vault = "$($item.name)"; $vaultLocation = "$($item.properties.location)"
            $purgeDate = "$($item.properties.scheduledPurgeDate)"
            $vaultEnv = if ($item.properties.tags) { "$($item.properties.tags.'azd-env-name')" } else { '' }
            if ($vaultEnv -ne $env:AZURE_ENV_NAME) { continue }
            if ($location -and (($vaultLocation -replace ' ', '').ToLowerInvariant() -ne $location)) { continue }
            if ($vault -cnotmatch '^(kv-[a-z0-9]{13})(-([0-9]{1,4}))?$') { continue }
            $base = $Matches[1]
            $vaultGeneration = if ($Matches[3]) { [int]$Matches[3] } else { 1 }
            if ($vaultGeneration -gt $highest) { $highest = $vaultGeneration }
            if ($vaultGeneration -eq [int]$generation) { $taken = $vault; $until = $purgeDate }
        }
        if ($taken) {
            $next = $highest + 1
            $when = if ($until) { $until } else { 'its retention ends' }
            Write-Host "pre-provision: Key Vault $taken (generation $generation) was deleted and is purge-protected: its name is taken until $when. Using generation $next ($base-$next), a new and empty vault: put the SendGrid API key into it after provisioning (docs/deploy.md, step 3). To keep the old vault and its secret instead: az keyvault recover --name $taken (its resource group must exist again), then azd env set KEY_VAULT_GENERATION $generation"
            Set-AzdValue KEY_VAULT_GENERATION "$next"
        } else {
            Write-Host "pre-provision: Key Vault: no soft-deleted vault holds the name of generation $generation"
        }
    }
}

# ---------------------------------------------------------------------------------------------- segments account
$accountId = "$env:SEGMENTS_STORAGE_ACCOUNT_ID"
$currentTopic = "$env:SEGMENTS_SYSTEM_TOPIC_ID"
if (-not $accountId) {
    Write-Host "pre-provision: segments: the dedicated segments account (SEGMENTS_STORAGE_ACCOUNT_ID is not set)"
    if ($currentTopic) {
        Write-Host "pre-provision: clearing SEGMENTS_SYSTEM_TOPIC_ID (it belongs to an existing account no longer in use)"
        Set-AzdValue SEGMENTS_SYSTEM_TOPIC_ID ''
    }
    exit 0
}

# ARM IDs are case-insensitive (-match is): some tools write resourcegroups.
$idPattern = '^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[a-z0-9]{3,24}$'
if ($accountId -notmatch $idPattern) {
    Fail "SEGMENTS_STORAGE_ACCOUNT_ID is not a storage account resource ID (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Storage/storageAccounts/<name>): $accountId"
}
$parts = $accountId.Split('/')
$segSubscription = $parts[2]; $segGroup = $parts[4]; $segAccount = $parts[8]
$container = if ($env:SEGMENTS_CONTAINER_NAME) { $env:SEGMENTS_CONTAINER_NAME } else { 'segments' }
Write-Host "pre-provision: segments: existing account $segAccount (group $segGroup), container $container"

az storage account show --ids $accountId --query id -o tsv 2>$null | Out-Null
if ($LASTEXITCODE -ne 0) { Fail "az cannot see the storage account ${accountId}: check the ID and that you can read it (Reader on it)" }
$exists = az storage container-rm exists --storage-account $accountId --name $container --query exists -o tsv 2>$null
if ($LASTEXITCODE -ne 0) { $exists = 'unknown' }
switch ("$exists") {
    'true' { }
    'false' { Fail "the account $segAccount has no container '$container': the template does not create containers on an existing account; ask its owner, or set SEGMENTS_CONTAINER_NAME to the platform's container" }
    default { Write-Host "pre-provision: WARNING: could not check that container '$container' exists in $segAccount" }
}
$softDelete = az storage account blob-service-properties show --account-name $segAccount --resource-group $segGroup --subscription $segSubscription --query deleteRetentionPolicy.enabled -o tsv 2>$null
if ("$softDelete" -eq 'true') {
    Write-Host "pre-provision: WARNING: blob soft delete is on for ${segAccount}: Customer Insights exports to it fail. The deployment changes nothing on that account; its owner decides (docs/deploy.md, Connect your platform)."
}

if ($env:AZURE_SUBSCRIPTION_ID -and $segSubscription -ne $env:AZURE_SUBSCRIPTION_ID) {
    $state = az provider show --namespace Microsoft.EventGrid --subscription $segSubscription --query registrationState -o tsv 2>$null
    if ($state -ne 'Registered') {
        Write-Host "pre-provision: registering Microsoft.EventGrid in the segments account's subscription $segSubscription"
        az provider register --namespace Microsoft.EventGrid --subscription $segSubscription --wait --output none
        if ($LASTEXITCODE -ne 0) {
            Fail "could not register Microsoft.EventGrid in subscription ${segSubscription}: someone with Owner or Contributor there must run ``az provider register --namespace Microsoft.EventGrid``"
        }
    }
}

# The account's system topic, if any (an account has at most one), with its azd-env-name tag.
$topics = az eventgrid system-topic list --subscription $segSubscription -o json 2>$null
if ($LASTEXITCODE -ne 0) {
    Write-Host "pre-provision: WARNING: could not list the Event Grid system topics of subscription ${segSubscription}; keeping SEGMENTS_SYSTEM_TOPIC_ID='$currentTopic'. If the account already has a topic and this is empty, the deployment fails: set it with  azd env set SEGMENTS_SYSTEM_TOPIC_ID <topic resource ID>"
    exit 0
}
$foundId = ''; $foundEnv = ''
$found = if ("$topics".Trim()) { $topics | Out-String | ConvertFrom-Json } else { @() }
foreach ($topic in $found) {
    if (-not $topic) { continue }
    $topicId = "$($topic.id)"; $topicSource = "$($topic.source)"
    $topicEnv = if ($topic.tags) { "$($topic.tags.'azd-env-name')" } else { '' }
    if ($topicSource -and $topicSource.ToLowerInvariant() -eq $accountId.ToLowerInvariant()) {
        $foundId = $topicId; $foundEnv = $topicEnv
        break
    }
}
# Ours only if this template made it (evgt-segments-<token>, tagged with this environment).
$own = $foundId -and ($foundId.Split('/')[-1] -like 'evgt-segments-*') -and $env:AZURE_ENV_NAME -and ($foundEnv -eq $env:AZURE_ENV_NAME)
if ($foundId -and -not $own) {
    Write-Host "pre-provision: reusing the account's Event Grid system topic $($foundId.Split('/')[-1]) (an account has at most one)"
    if ($foundId -ne $currentTopic) { Set-AzdValue SEGMENTS_SYSTEM_TOPIC_ID $foundId }
} else {
    if ($foundId) {
        Write-Host "pre-provision: the account's Event Grid system topic $($foundId.Split('/')[-1]) is this environment's own"
    } else {
        Write-Host "pre-provision: the account has no Event Grid system topic yet: the template creates one"
    }
    if ($currentTopic) { Set-AzdValue SEGMENTS_SYSTEM_TOPIC_ID '' }
}
