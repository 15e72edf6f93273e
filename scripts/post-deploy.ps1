# azd postdeploy hook for Windows (azure.yaml `windows:`), the same steps as scripts/post-deploy.sh, which says why
# they run after deployment: wait for the app's blobs_extension key, create or update the Event Grid subscription
# that feeds the blob trigger on the segments account's system topic, and say whether the SendGrid key is in
# Key Vault (names only, never values), and create the erasure key once if the vault has none. Never prints the
# key, the webhook URL or the erasure key.
# PowerShell 7 (pwsh) or Windows PowerShell 5.1; needs the Azure CLI (`az login`).
# Keep the two scripts in step: tests/test_infra_hooks.py compares the az commands and azd values they use.
# Continue: failures are read from $LASTEXITCODE (Windows PowerShell 5.1 turns a native command's redirected stderr
# into a terminating error under 'Stop').
$ErrorActionPreference = 'Continue'

function Fail([string]$message) {
    [Console]::Error.WriteLine("post-deploy: $message")
    exit 1
}

if (-not (Get-Command az -ErrorAction SilentlyContinue)) { Fail "the Azure CLI (az) is needed: https://aka.ms/azure-cli" }

# Outside azd (e.g. run by hand) take the values from the current azd environment.
$wanted = @('RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'AZURE_FUNCTION_APP_HOSTNAME', 'EVENT_GRID_SYSTEM_TOPIC_NAME',
            'EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP', 'EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID', 'SEGMENTS_CONTAINER_NAME',
            'AZURE_KEY_VAULT_NAME', 'SENDGRID_SECRET_NAME', 'AZURE_SUBSCRIPTION_ID', 'VNET_ENABLED')
if (-not $env:AZURE_FUNCTION_APP_NAME -and (Get-Command azd -ErrorAction SilentlyContinue)) {
    foreach ($line in (& azd env get-values)) {
        if ($line -match '^([^=]+)=(.*)$' -and $wanted -contains $Matches[1]) {
            [Environment]::SetEnvironmentVariable($Matches[1], ($Matches[2] -replace '^"|"$', ''))
        }
    }
}

foreach ($name in @('RESOURCE_GROUP', 'AZURE_FUNCTION_APP_NAME', 'EVENT_GRID_SYSTEM_TOPIC_NAME')) {
    if (-not [Environment]::GetEnvironmentVariable($name)) { Fail "${name} is not set: run azd provision first" }
}
$resourceGroup = $env:RESOURCE_GROUP
$appName = $env:AZURE_FUNCTION_APP_NAME
$segmentsContainer = if ($env:SEGMENTS_CONTAINER_NAME) { $env:SEGMENTS_CONTAINER_NAME } else { 'segments' }
$functionName = if ($env:BLOB_TRIGGER_FUNCTION) { $env:BLOB_TRIGGER_FUNCTION } else { 'ExportOnNewSegmentFile' }
# Event subscription names: 3-64 letters, digits and hyphens.
$subscriptionName = if ($env:EVENT_SUBSCRIPTION_NAME) { $env:EVENT_SUBSCRIPTION_NAME } else { "segments-$appName" }
if ($subscriptionName.Length -gt 64) { $subscriptionName = $subscriptionName.Substring(0, 64) }
$waitSeconds = if ($env:POSTDEPLOY_WAIT_SECONDS) { [int]$env:POSTDEPLOY_WAIT_SECONDS } else { 300 }
$topicGroup = if ($env:EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP) { $env:EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP } else { $resourceGroup }
$subscription = @()
if ($env:AZURE_SUBSCRIPTION_ID) { $subscription = @('--subscription', $env:AZURE_SUBSCRIPTION_ID) }
# The topic's subscription: an existing segments account may live in another one.
$topicSubscription = $subscription
if ($env:EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID) { $topicSubscription = @('--subscription', $env:EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID) }

$hostname = $env:AZURE_FUNCTION_APP_HOSTNAME
if (-not $hostname) {
    $hostname = az functionapp show -g $resourceGroup -n $appName @subscription --query defaultHostName -o tsv
}

# 1. Wait for the blobs_extension system key: it appears once the host has loaded the Event Grid blob trigger.
Write-Host "post-deploy: waiting for the blobs_extension key of $appName (up to ${waitSeconds}s)"
$deadline = (Get-Date).AddSeconds($waitSeconds)
while ($true) {
    $key = az functionapp keys list -g $resourceGroup -n $appName @subscription --query "systemKeys.blobs_extension" -o tsv 2>$null
    if ($LASTEXITCODE -eq 0 -and $key -and $key -ne 'None') { break }
    if ((Get-Date) -ge $deadline) {
        Fail ("no blobs_extension key after ${waitSeconds}s: did the deployment succeed and does the app load its functions? " +
              "(Azure portal > the function app > Functions; Application Insights > traces) Right after the first " +
              "``azd provision`` the app's role assignments can take a few minutes to apply, so its first start may fail " +
              "with 403: wait a few minutes, then run ``azd deploy`` again (docs/deploy.md, step 2).")
    }
    Start-Sleep -Seconds 10
}

# 2. Create or update the subscription. Event Grid validates the endpoint right away; a cold instance may miss the
#    first handshake, so retry a few times. The URL holds & and the key: it goes to az as one argument, and through
#    az.cmd's command line, so it is quoted for cmd (as Microsoft's Flex quickstart does).
$endpoint = "https://$hostname/runtime/webhooks/blobs?functionName=Host.Functions.$functionName&code=$key"
$quotedEndpoint = '"' + $endpoint + '"'
Write-Host "post-deploy: Event Grid subscription $subscriptionName on $($env:EVENT_GRID_SYSTEM_TOPIC_NAME) (resource group $topicGroup) -> $functionName (BlobCreated under /$segmentsContainer/)"
$attempt = 1
while ($true) {
    az eventgrid system-topic event-subscription create `
        --name $subscriptionName `
        --resource-group $topicGroup `
        --system-topic-name $env:EVENT_GRID_SYSTEM_TOPIC_NAME `
        --endpoint-type webhook `
        --endpoint $quotedEndpoint `
        --included-event-types Microsoft.Storage.BlobCreated `
        --subject-begins-with "/blobServices/default/containers/$segmentsContainer/blobs/" `
        --max-delivery-attempts 30 `
        --event-ttl 1440 `
        --output none @topicSubscription
    if ($LASTEXITCODE -eq 0) { break }
    if ($attempt -ge 3) {
        Fail ("could not create the Event Grid subscription (webhook validation failed 3 times; on an existing " +
              "account's topic you need EventGrid Contributor or Contributor on its resource group)")
    }
    $attempt += 1
    Write-Host "post-deploy: retrying in 20s (attempt $attempt of 3)"
    Start-Sleep -Seconds 20
}
Remove-Variable key, endpoint, quotedEndpoint
Write-Host ("post-deploy: Event Grid subscription ready. New files under $segmentsContainer/ now start exports " +
            "(files already in the container are not replayed: use the StartExport HTTP function for those).")

# 3. Remind about the SendGrid key: the template never writes it. Only names are listed, never values.
if ($env:AZURE_KEY_VAULT_NAME -and $env:SENDGRID_SECRET_NAME) {
    $found = az keyvault secret list --vault-name $env:AZURE_KEY_VAULT_NAME @subscription --query "[?name=='$($env:SENDGRID_SECRET_NAME)'] | length(@)" -o tsv 2>$null
    if ($LASTEXITCODE -ne 0) { $found = 'unknown' }
    switch ("$found") {
        '1' { Write-Host "post-deploy: Key Vault secret '$($env:SENDGRID_SECRET_NAME)' is present in $($env:AZURE_KEY_VAULT_NAME)." }
        '0' { Write-Host "post-deploy: NOTE: Key Vault $($env:AZURE_KEY_VAULT_NAME) has no secret '$($env:SENDGRID_SECRET_NAME)' yet; exports fail until you add the SendGrid API key (docs/deploy.md, step 3)." }
        default { Write-Host "post-deploy: could not list the secrets of $($env:AZURE_KEY_VAULT_NAME) (no access? a role assigned by the first azd provision can take a few minutes to apply; with vnetEnabled the vault takes no public calls); make sure the secret '$($env:SENDGRID_SECRET_NAME)' exists (docs/deploy.md, step 3)." }
    }
}

# 4. The erasure key (README "Erasure"): the HMAC key of the do-not-export set, in the vault under the name the app
#    reads (its ERASURE_KEY_SECRET setting, default erasure-hmac-key). Without it every erasure ends `failed`.
#    Created here once, when the vault positively has no secret of that name: 32 random bytes, base64.
#    NEVER overwritten, rotated or re-created (nor when the listing fails): every digest in the do-not-export set
#    was made with this key, so a new one would make every stored digest stop matching and erased people would be
#    exported again. The value never reaches the console, a log or a command line: it is written into a temporary
#    file of this user's (0600 on Linux and macOS, the profile's ACL on Windows), az reads it from there (--file)
#    and the file is deleted.
if ($env:AZURE_KEY_VAULT_NAME) {
    $vault = $env:AZURE_KEY_VAULT_NAME
    $erasureSecret = az functionapp config appsettings list -g $resourceGroup -n $appName @subscription --query "[?name=='ERASURE_KEY_SECRET'].value | [0]" -o tsv 2>$null
    if ($LASTEXITCODE -ne 0 -or -not $erasureSecret -or "$erasureSecret" -eq 'None') { $erasureSecret = 'erasure-hmac-key' }
    $where = "with Key Vault Secrets Officer on $vault"
    if ("$($env:VNET_ENABLED)" -eq 'true') {
        $where += ", from a machine in the VNet (vnetEnabled: the vault takes no public calls, docs/deploy.md 6.5)"
    }
    function Write-ErasureKeyByHand([string]$why) {
        Write-Host ("post-deploy: NOTE: $why. Erasures fail until the vault holds the erasure key. Create it once, ${where}: " +
                    "run ``azd hooks run postdeploy`` again, or check that " +
                    "``az keyvault secret list --vault-name $vault --query `"[?name=='$erasureSecret'].name`"`` lists nothing, then run")
        Write-Host '  $b = New-Object byte[] 32; [Security.Cryptography.RandomNumberGenerator]::Create().GetBytes($b); $f = (New-TemporaryFile).FullName; [IO.File]::WriteAllText($f, [Convert]::ToBase64String($b))'
        Write-Host "  az keyvault secret set --vault-name $vault --name $erasureSecret --file `$f --encoding utf-8 --output none; Remove-Item `$f"
        Write-Host ("post-deploy: if az says the secret is deleted but recoverable, recover it instead (the old key keeps the " +
                    "stored digests valid): az keyvault secret recover --vault-name $vault --name $erasureSecret. " +
                    "Never replace an existing erasure key (README `"Erasure`").")
    }
    $found = az keyvault secret list --vault-name $vault @subscription --query "[?name=='$erasureSecret'] | length(@)" -o tsv 2>$null
    if ($LASTEXITCODE -ne 0) { $found = 'unknown' }
    switch ("$found") {
        '1' { Write-Host "post-deploy: erasure key '$erasureSecret' is present in $vault (left as it is: it is never replaced)." }
        '0' {
            $reason = ''
            $valueFile = $null
            try {
                $valueFile = [System.IO.Path]::GetTempFileName()
                $bytes = New-Object byte[] 32
                $random = [System.Security.Cryptography.RandomNumberGenerator]::Create()
                $random.GetBytes($bytes)
                $random.Dispose()
                $erasureValue = [Convert]::ToBase64String($bytes)
                [Array]::Clear($bytes, 0, $bytes.Length)
                # UTF-8 without a BOM and without a newline: the secret is exactly the 44 characters.
                [System.IO.File]::WriteAllText($valueFile, $erasureValue, (New-Object System.Text.UTF8Encoding($false)))
                $errorText = az keyvault secret set --vault-name $vault --name $erasureSecret --file $valueFile --encoding utf-8 --output none @subscription 2>&1
                if ($LASTEXITCODE -eq 0) {
                    Write-Host "post-deploy: created the erasure key '$erasureSecret' in $vault (32 random bytes; never replace it)."
                } else {
                    # az's first line of complaint, unless it quotes the value (it should not).
                    $first = $errorText | ForEach-Object { "$_" } | Where-Object { $_.Trim() -and -not $_.Contains($erasureValue) } | Select-Object -First 1
                    $reason = if ($first) { "az could not create it ($first)" } else { 'az could not create it (no reason given)' }
                }
            } catch {
                $reason = 'no random key could be written to a temporary file'
            } finally {
                if ($valueFile) { Remove-Item -LiteralPath $valueFile -Force -ErrorAction SilentlyContinue }
                Remove-Variable erasureValue, bytes -ErrorAction SilentlyContinue
            }
            if ($reason) { Write-ErasureKeyByHand "the erasure key '$erasureSecret' is not in ${vault}: $reason" }
        }
        default {
            Write-ErasureKeyByHand ("could not list the secrets of $vault to look for the erasure key '$erasureSecret' " +
                                    "(no access? a role assigned by the first azd provision can take a few minutes to apply)")
        }
    }
}
