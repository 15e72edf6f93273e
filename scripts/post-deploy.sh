#!/usr/bin/env bash
# azd postdeploy hook (azure.yaml): creates or updates the Event Grid subscription that feeds the blob trigger.
#
# Why here and not in Bicep: on Flex Consumption the blob trigger uses source=EventGrid. Event Grid must POST
# BlobCreated events to the app's webhook  /runtime/webhooks/blobs?functionName=Host.Functions.<function>&code=<key>
# and <key> is the app's `blobs_extension` system key, which the Functions host creates only after the code is
# deployed and the blob trigger has started. Event Grid also validates the webhook (a handshake answered by the
# running function) when the subscription is created. Neither is possible during `azd provision`. The script is
# idempotent: `create` on an existing subscription updates it (e.g. after the key was rotated).
#
# The subscription goes on the Event Grid system topic of the segments account, wherever it is: the dedicated
# account's topic in the app's resource group, or, with an existing account (SEGMENTS_STORAGE_ACCOUNT_ID), the
# topic the template created in that account's resource group or the one it already had (found by
# scripts/pre-provision.sh, azd value SEGMENTS_SYSTEM_TOPIC_ID). main.bicep outputs that topic's name, resource
# group and subscription; the subscription is filtered on the segments container, so a topic shared with other
# subscribers (another app, the owner's own) is left as it is.
#
# Reads the azd environment (outputs of infra/main.bicep): RESOURCE_GROUP, AZURE_FUNCTION_APP_NAME,
# AZURE_FUNCTION_APP_HOSTNAME, EVENT_GRID_SYSTEM_TOPIC_NAME, EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP,
# EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID, SEGMENTS_CONTAINER_NAME, AZURE_KEY_VAULT_NAME, SENDGRID_SECRET_NAME,
# AZURE_SUBSCRIPTION_ID (so `az` works on azd's subscription whatever its own default is), VNET_ENABLED.
# Optional: BLOB_TRIGGER_FUNCTION (default ExportOnNewSegmentFile), EVENT_SUBSCRIPTION_NAME (default
# segments-<function app name>, so that several apps can watch one account), POSTDEPLOY_WAIT_SECONDS (default 300).
# Needs the Azure CLI (`az login`) and openssl. Never prints the key, the webhook URL or the erasure key.
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

fail() { echo "post-deploy: $*" >&2; exit 1; }
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is needed: https://aka.ms/azure-cli"

# Outside azd (e.g. run by hand) take the values from the current azd environment.
if [ -z "${AZURE_FUNCTION_APP_NAME:-}" ] && command -v azd >/dev/null 2>&1; then
  while IFS='=' read -r key value; do
    value="${value%\"}"; value="${value#\"}"
    case "$key" in
      RESOURCE_GROUP|AZURE_FUNCTION_APP_NAME|AZURE_FUNCTION_APP_HOSTNAME|EVENT_GRID_SYSTEM_TOPIC_NAME|\
      EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP|EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID|\
      SEGMENTS_CONTAINER_NAME|AZURE_KEY_VAULT_NAME|SENDGRID_SECRET_NAME|AZURE_SUBSCRIPTION_ID|VNET_ENABLED) \
        export "$key=$value" ;;
    esac
  done < <(azd env get-values)
fi

: "${RESOURCE_GROUP:?not set: run azd provision first}"
: "${AZURE_FUNCTION_APP_NAME:?not set: run azd provision first}"
: "${EVENT_GRID_SYSTEM_TOPIC_NAME:?not set: run azd provision first}"
segments_container="${SEGMENTS_CONTAINER_NAME:-segments}"
function_name="${BLOB_TRIGGER_FUNCTION:-ExportOnNewSegmentFile}"
# Event subscription names: 3-64 letters, digits and hyphens.
subscription_name="${EVENT_SUBSCRIPTION_NAME:-$(printf 'segments-%s' "$AZURE_FUNCTION_APP_NAME" | cut -c1-64)}"
wait_seconds="${POSTDEPLOY_WAIT_SECONDS:-300}"
topic_group="${EVENT_GRID_SYSTEM_TOPIC_RESOURCE_GROUP:-$RESOURCE_GROUP}"
subscription=()
[ -z "${AZURE_SUBSCRIPTION_ID:-}" ] || subscription=(--subscription "$AZURE_SUBSCRIPTION_ID")
# The topic's subscription: an existing segments account may live in another one.
topic_subscription=(${subscription[@]+"${subscription[@]}"})
[ -z "${EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID:-}" ] || topic_subscription=(--subscription "$EVENT_GRID_SYSTEM_TOPIC_SUBSCRIPTION_ID")
# az on the azd environment's subscription, and on the topic's.
azs() { az "$@" ${subscription[@]+"${subscription[@]}"}; }
azt() { az "$@" ${topic_subscription[@]+"${topic_subscription[@]}"}; }

hostname="${AZURE_FUNCTION_APP_HOSTNAME:-}"
if [ -z "$hostname" ]; then
  hostname="$(azs functionapp show -g "$RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" --query defaultHostName -o tsv)"
fi

# 1. Wait for the blobs_extension system key: it appears once the host has loaded the Event Grid blob trigger.
echo "post-deploy: waiting for the blobs_extension key of $AZURE_FUNCTION_APP_NAME (up to ${wait_seconds}s)"
key=""
deadline=$((SECONDS + wait_seconds))
while :; do
  key="$(azs functionapp keys list -g "$RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
           --query "systemKeys.blobs_extension" -o tsv 2>/dev/null || true)"
  [ -n "$key" ] && [ "$key" != "None" ] && break
  [ "$SECONDS" -lt "$deadline" ] || fail "no blobs_extension key after ${wait_seconds}s: did the deployment succeed and \
does the app load its functions? (Azure portal > the function app > Functions; Application Insights > traces) \
Right after the first \`azd provision\` the app's role assignments can take a few minutes to apply, so its first \
start may fail with 403: wait a few minutes, then run \`azd deploy\` again (docs/deploy.md, step 2)."
  sleep 10
done

# 2. Create or update the subscription. Event Grid validates the endpoint right away; a cold instance may
#    miss the first handshake, so retry a few times.
endpoint="https://${hostname}/runtime/webhooks/blobs?functionName=Host.Functions.${function_name}&code=${key}"
echo "post-deploy: Event Grid subscription $subscription_name on $EVENT_GRID_SYSTEM_TOPIC_NAME" \
     "(resource group $topic_group) -> $function_name (BlobCreated under /$segments_container/)"
attempt=1
until azt eventgrid system-topic event-subscription create \
        --name "$subscription_name" \
        --resource-group "$topic_group" \
        --system-topic-name "$EVENT_GRID_SYSTEM_TOPIC_NAME" \
        --endpoint-type webhook \
        --endpoint "$endpoint" \
        --included-event-types Microsoft.Storage.BlobCreated \
        --subject-begins-with "/blobServices/default/containers/${segments_container}/blobs/" \
        --max-delivery-attempts 30 \
        --event-ttl 1440 \
        --output none; do
  [ "$attempt" -lt 3 ] || fail "could not create the Event Grid subscription (webhook validation failed 3 times;" \
    "on an existing account's topic you need EventGrid Contributor or Contributor on its resource group)"
  attempt=$((attempt + 1))
  echo "post-deploy: retrying in 20s (attempt $attempt of 3)"
  sleep 20
done
unset key endpoint
echo "post-deploy: Event Grid subscription ready. New files under $segments_container/ now start exports" \
     "(files already in the container are not replayed: use the StartExport HTTP function for those)."

# 3. Remind about the SendGrid key: the template never writes it. Only names are listed, never values.
if [ -n "${AZURE_KEY_VAULT_NAME:-}" ] && [ -n "${SENDGRID_SECRET_NAME:-}" ]; then
  found="$(azs keyvault secret list --vault-name "$AZURE_KEY_VAULT_NAME" \
             --query "[?name=='${SENDGRID_SECRET_NAME}'] | length(@)" -o tsv 2>/dev/null || echo unknown)"
  case "$found" in
    1) echo "post-deploy: Key Vault secret '$SENDGRID_SECRET_NAME' is present in $AZURE_KEY_VAULT_NAME." ;;
    0) echo "post-deploy: NOTE: Key Vault $AZURE_KEY_VAULT_NAME has no secret '$SENDGRID_SECRET_NAME' yet;" \
            "exports fail until you add the SendGrid API key (docs/deploy.md, step 3)." ;;
    *) echo "post-deploy: could not list the secrets of $AZURE_KEY_VAULT_NAME (no access? a role assigned by" \
            "the first azd provision can take a few minutes to apply; with vnetEnabled the vault takes no public" \
            "calls); make sure the secret" \
            "'$SENDGRID_SECRET_NAME' exists (docs/deploy.md, step 3)." ;;
  esac
fi

# 4. The erasure key (README "Erasure"): the HMAC key of the do-not-export set, in the vault under the name the app
#    reads (its ERASURE_KEY_SECRET setting, default erasure-hmac-key). Without it every erasure ends `failed`.
#    Created here once, when the vault positively has no secret of that name: 32 random bytes, base64.
#    NEVER overwritten, rotated or re-created (nor when the listing fails): every digest in the do-not-export set
#    was made with this key, so a new one would make every stored digest stop matching and erased people would be
#    exported again. The value never reaches the terminal, a log or a command line: openssl writes it into a file
#    only this user can read, az reads it from there (--file) and the file is deleted.
if [ -n "${AZURE_KEY_VAULT_NAME:-}" ]; then
  vault="$AZURE_KEY_VAULT_NAME"
  erasure_secret="$(azs functionapp config appsettings list -g "$RESOURCE_GROUP" -n "$AZURE_FUNCTION_APP_NAME" \
                      --query "[?name=='ERASURE_KEY_SECRET'].value | [0]" -o tsv 2>/dev/null || true)"
  case "$erasure_secret" in ""|None) erasure_secret=erasure-hmac-key ;; esac
  where="with Key Vault Secrets Officer on $vault"
  case "${VNET_ENABLED:-}" in
    [Tt]rue) where="$where, from a machine in the VNet (vnetEnabled: the vault takes no public calls, docs/deploy.md 6.5)" ;;
  esac
  erasure_key_by_hand() {
    echo "post-deploy: NOTE: $*. Erasures fail until the vault holds the erasure key. Create it once, $where:" \
         "run \`azd hooks run postdeploy\` again, or check that" \
         "\`az keyvault secret list --vault-name $vault --query \"[?name=='$erasure_secret'].name\"\` lists nothing, then run"
    echo "  keyfile=\"\$(umask 077; mktemp)\"; openssl rand -base64 32 | tr -d '\\n' > \"\$keyfile\""
    echo "  az keyvault secret set --vault-name $vault --name $erasure_secret --file \"\$keyfile\" --encoding utf-8 --output none; rm -f \"\$keyfile\""
    echo "post-deploy: if az says the secret is deleted but recoverable, recover it instead (the old key keeps the" \
         "stored digests valid): az keyvault secret recover --vault-name $vault --name $erasure_secret." \
         "Never replace an existing erasure key (README \"Erasure\")."
  }
  found="$(azs keyvault secret list --vault-name "$vault" \
             --query "[?name=='${erasure_secret}'] | length(@)" -o tsv 2>/dev/null || echo unknown)"
  case "$found" in
    1) echo "post-deploy: erasure key '$erasure_secret' is present in $vault (left as it is: it is never replaced)." ;;
    0)
      reason=""; erasure_dir=""
      trap '[ -z "$erasure_dir" ] || rm -rf "$erasure_dir"' EXIT
      if ! command -v openssl >/dev/null 2>&1; then
        reason="openssl is not installed"
      elif ! erasure_dir="$(mktemp -d)"; then  # 0700, and the file in it 0600
        reason="mktemp -d failed"
      elif ! (umask 077 && openssl rand -base64 32 | tr -d '\n' > "$erasure_dir/value") \
           || [ "$(($(wc -c < "$erasure_dir/value")))" -ne 44 ]; then
        reason="openssl rand failed"
      elif error="$(azs keyvault secret set --vault-name "$vault" --name "$erasure_secret" \
                      --file "$erasure_dir/value" --encoding utf-8 --output none 2>&1 >/dev/null)"; then
        echo "post-deploy: created the erasure key '$erasure_secret' in $vault (32 random bytes; never replace it)."
      else
        # az's first line of complaint, unless it quotes the value (it should not).
        reason="$(printf '%s\n' "$error" | grep -vF -f "$erasure_dir/value" | grep -m1 . || true)"
        reason="az could not create it (${reason:-no reason given})"
      fi
      [ -z "$erasure_dir" ] || rm -rf "$erasure_dir"
      trap - EXIT
      [ -z "$reason" ] || erasure_key_by_hand "the erasure key '$erasure_secret' is not in $vault: $reason"
      ;;
    *) erasure_key_by_hand "could not list the secrets of $vault to look for the erasure key '$erasure_secret'" \
         "(no access? a role assigned by the first azd provision can take a few minutes to apply)" ;;
  esac
fi
