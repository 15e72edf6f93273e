#!/usr/bin/env bash
# azd preprovision hook (azure.yaml): registers the resource providers a first deployment on a fresh
# subscription can lack, before `azd provision` (or `azd up`) creates anything.
#
#   Microsoft.App        Flex Consumption runs on it. A subscription that never used Container Apps may not have
#                        it registered, and the Function App then fails to create (terraform-provider-azurerm#30397,
#                        azure-cli#33177); ARM does not register it for us because no resource in infra/ has its type.
#   Microsoft.EventGrid  the system topic on the storage account and the subscription scripts/post-deploy.sh makes.
#
# A provider already registered is left alone; a missing one is registered (`az provider register --wait`, which
# takes a minute or two and needs Owner or Contributor on the subscription). Safe to run again:
# `azd hooks run preprovision`. Reads AZURE_SUBSCRIPTION_ID (azd passes its environment to hooks), so `az` works
# on the subscription azd deploys to even when its own default is another one.
# Optional: REQUIRED_PROVIDERS (space-separated namespaces) to change the list.
#
# With an existing segments account (azd value SEGMENTS_STORAGE_ACCOUNT_ID, docs/deploy.md "Connect your platform")
# it also, without changing anything on that account:
#   - checks the ID's form, that az can see the account and that the container SEGMENTS_CONTAINER_NAME (default
#     segments) exists there (the template does not create it);
#   - warns when blob soft delete is on for it (Customer Insights exports then fail; the account is its owner's);
#   - registers Microsoft.EventGrid in the account's subscription when that is another one;
#   - finds the account's Event Grid system topic (an account has at most one, in any resource group of its
#     subscription: `az eventgrid system-topic list`, matched on its source). A topic this azd environment did
#     not create (no tag azd-env-name=AZURE_ENV_NAME) is reused: its ID goes into the azd value
#     SEGMENTS_SYSTEM_TOPIC_ID, which the template reads instead of creating a second topic (which ARM refuses).
#     azd reloads its environment after a hook, so the same `azd provision` sees it.
# Key Vault: after `azd down` the purge-protected vault stays soft-deleted under its name for 90 days; when the
# name of the current generation is taken so, the next generation is recorded (azd value KEY_VAULT_GENERATION,
# main.bicep keyVaultGeneration: kv-<token>-<n>) and the hook says how to recover the old vault instead.
# Without SEGMENTS_STORAGE_ACCOUNT_ID a leftover SEGMENTS_SYSTEM_TOPIC_ID is cleared (the dedicated account's topic
# is the template's own).
# Needs the Azure CLI (`az login`); `azd` to record SEGMENTS_SYSTEM_TOPIC_ID (else it prints the command).
[ -n "${BASH_VERSION:-}" ] || exec bash "$0" "$@"
set -euo pipefail

fail() { echo "pre-provision: $*" >&2; exit 1; }
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is needed: https://aka.ms/azure-cli"

providers="${REQUIRED_PROVIDERS:-Microsoft.App Microsoft.EventGrid}"
subscription=()
[ -z "${AZURE_SUBSCRIPTION_ID:-}" ] || subscription=(--subscription "$AZURE_SUBSCRIPTION_ID")

az account show ${subscription[@]+"${subscription[@]}"} --query id -o tsv >/dev/null 2>&1 \
  || fail "az cannot see subscription ${AZURE_SUBSCRIPTION_ID:-(az default)}: sign in with \`az login\` (azd and az sign in separately)"

for namespace in $providers; do
  state="$(az provider show --namespace "$namespace" ${subscription[@]+"${subscription[@]}"} \
             --query registrationState -o tsv 2>/dev/null || true)"
  if [ "$state" = "Registered" ]; then
    echo "pre-provision: resource provider $namespace is registered"
    continue
  fi
  echo "pre-provision: registering resource provider $namespace (state: ${state:-unknown}); this takes a minute or two"
  az provider register --namespace "$namespace" ${subscription[@]+"${subscription[@]}"} --wait --output none \
    || fail "could not register $namespace: someone with Owner or Contributor on the subscription must run" \
            "\`az provider register --namespace $namespace\` (docs/deploy.md, step 1)"
  echo "pre-provision: resource provider $namespace is registered"
done

# ---------------------------------------------------------------------------------------------- segments account
account_id="${SEGMENTS_STORAGE_ACCOUNT_ID:-}"
current_topic="${SEGMENTS_SYSTEM_TOPIC_ID:-}"

# Records an azd value (azd reloads its environment after the hook), or says what to run when azd is absent.
azd_set() {
  if command -v azd >/dev/null 2>&1; then
    azd env set "$1" "$2" >/dev/null || fail "could not run: azd env set $1 \"$2\""
  else
    echo "pre-provision: azd not found: run  azd env set $1 \"$2\"  before azd provision"
  fi
}

# ---------------------------------------------------------------------------------------------- Key Vault name
# The vault is purge-protected: after `azd down` it stays soft-deleted, its name taken, for its retention (90 days),
# and a new vault of that name fails to deploy. Soft-deleted vaults keep their tags, so this finds the ones this azd
# environment made (tag azd-env-name, same location: the name's token comes from both) and, when the name of the
# current generation (azd value KEY_VAULT_GENERATION, default 1) is among them, moves to the next generation
# (kv-<token>-<n>): a new, empty vault. Names of the form main.bicep generates only.
generation="${KEY_VAULT_GENERATION:-1}"
[[ "$generation" =~ ^[0-9]{1,4}$ ]] || fail "KEY_VAULT_GENERATION must be a number (1, 2, ...), not '$generation'"
if [ -z "${AZURE_ENV_NAME:-}" ]; then
  echo "pre-provision: AZURE_ENV_NAME is not set: not checking for a soft-deleted Key Vault of this environment"
elif deleted="$(az keyvault list-deleted --resource-type vault ${subscription[@]+"${subscription[@]}"} \
                  --query '[].[name, properties.location, properties.tags."azd-env-name", properties.scheduledPurgeDate]' \
                  -o tsv 2>/dev/null)"; then
  location="$(printf '%s' "${AZURE_LOCATION:-}" | tr -d ' ' | tr '[:upper:]' '[:lower:]')"
  taken=""; base=""; highest="$generation"; until_date=""
  while IFS=$'\t' read -r vault vault_location vault_env purge_date; do
    [ -n "$vault" ] && [ "$vault_env" = "$AZURE_ENV_NAME" ] || continue
    [ -z "$location" ] || [ "$(printf '%s' "$vault_location" | tr -d ' ' | tr '[:upper:]' '[:lower:]')" = "$location" ] \
      || continue
    [[ "$vault" =~ ^(kv-[a-z0-9]{13})(-([0-9]{1,4}))?$ ]] || continue
    base="${BASH_REMATCH[1]}"; vault_generation="${BASH_REMATCH[3]:-1}"
    [ "$vault_generation" -le "$highest" ] || highest="$vault_generation"
    if [ "$vault_generation" = "$generation" ]; then taken="$vault"; until_date="$purge_date"; fi
  done <<<"$deleted"
  if [ -n "$taken" ]; then
    next=$((highest + 1))
    echo "pre-provision: Key Vault $taken (generation $generation) was deleted and is purge-protected: its name is" \
         "taken until ${until_date:-its retention ends}. Using generation $next ($base-$next), a new and empty vault:" \
         "put the SendGrid API key into it after provisioning (docs/deploy.md, step 3). To keep the old vault and its" \
         "secret instead: az keyvault recover --name $taken (its resource group must exist again), then" \
         "azd env set KEY_VAULT_GENERATION $generation"
    azd_set KEY_VAULT_GENERATION "$next"
  else
    echo "pre-provision: Key Vault: no soft-deleted vault holds the name of generation $generation"
  fi
else
  echo "pre-provision: WARNING: could not list soft-deleted Key Vaults (az keyvault list-deleted). If azd provision" \
       "fails because a vault of that name exists in the deleted state (after azd down), run" \
       "azd env set KEY_VAULT_GENERATION $((generation + 1)) and provision again"
fi

if [ -z "$account_id" ]; then
  echo "pre-provision: segments: the dedicated segments account (SEGMENTS_STORAGE_ACCOUNT_ID is not set)"
  if [ -n "$current_topic" ]; then
    echo "pre-provision: clearing SEGMENTS_SYSTEM_TOPIC_ID (it belongs to an existing account no longer in use)"
    azd_set SEGMENTS_SYSTEM_TOPIC_ID ""
  fi
  exit 0
fi

id_pattern='^/subscriptions/[0-9a-fA-F-]{36}/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[a-z0-9]{3,24}$'
shopt -s nocasematch   # ARM IDs are case-insensitive (some tools write resourcegroups)
[[ "$account_id" =~ $id_pattern ]] || fail "SEGMENTS_STORAGE_ACCOUNT_ID is not a storage account resource ID" \
  "(/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.Storage/storageAccounts/<name>): $account_id"
shopt -u nocasematch
IFS='/' read -r _ _ seg_subscription _ seg_group _ _ _ seg_account <<<"$account_id"
container="${SEGMENTS_CONTAINER_NAME:-segments}"
echo "pre-provision: segments: existing account $seg_account (group $seg_group), container $container"

az storage account show --ids "$account_id" --query id -o tsv >/dev/null 2>&1 \
  || fail "az cannot see the storage account $account_id: check the ID and that you can read it (Reader on it)"
exists="$(az storage container-rm exists --storage-account "$account_id" --name "$container" \
            --query exists -o tsv 2>/dev/null || echo unknown)"
case "$exists" in
  true) ;;
  false) fail "the account $seg_account has no container '$container': the template does not create containers" \
              "on an existing account; ask its owner, or set SEGMENTS_CONTAINER_NAME to the platform's container" ;;
  *) echo "pre-provision: WARNING: could not check that container '$container' exists in $seg_account" ;;
esac
soft_delete="$(az storage account blob-service-properties show --account-name "$seg_account" \
                 --resource-group "$seg_group" --subscription "$seg_subscription" \
                 --query deleteRetentionPolicy.enabled -o tsv 2>/dev/null || true)"
if [ "$soft_delete" = "true" ]; then
  echo "pre-provision: WARNING: blob soft delete is on for $seg_account: Customer Insights exports to it fail." \
       "The deployment changes nothing on that account; its owner decides (docs/deploy.md, Connect your platform)."
fi

if [ "$seg_subscription" != "${AZURE_SUBSCRIPTION_ID:-$seg_subscription}" ]; then
  state="$(az provider show --namespace Microsoft.EventGrid --subscription "$seg_subscription" \
             --query registrationState -o tsv 2>/dev/null || true)"
  if [ "$state" != "Registered" ]; then
    echo "pre-provision: registering Microsoft.EventGrid in the segments account's subscription $seg_subscription"
    az provider register --namespace Microsoft.EventGrid --subscription "$seg_subscription" --wait --output none \
      || fail "could not register Microsoft.EventGrid in subscription $seg_subscription: someone with Owner or" \
              "Contributor there must run \`az provider register --namespace Microsoft.EventGrid\`"
  fi
fi

# The account's system topic, if any: id <TAB> source <TAB> azd-env-name tag, one line per topic.
if topics="$(az eventgrid system-topic list --subscription "$seg_subscription" \
               --query '[].[id, source, tags."azd-env-name"]' -o tsv 2>/dev/null)"; then
  wanted="$(printf '%s' "$account_id" | tr '[:upper:]' '[:lower:]')"
  found_id=""; found_env=""
  while IFS=$'\t' read -r topic_id topic_source topic_env; do
    [ -n "$topic_id" ] || continue
    if [ "$(printf '%s' "$topic_source" | tr '[:upper:]' '[:lower:]')" = "$wanted" ]; then
      found_id="$topic_id"; found_env="$topic_env"
      break
    fi
  done <<<"$topics"
  own=false
  # Ours only if this template made it (evgt-segments-<token>, tagged with this environment): a topic an
  # earlier version made on the app's own account carries the tag too, and must be reused, not made again.
  case "${found_id##*/}" in
    evgt-segments-*) [ -n "$found_id" ] && [ -n "${AZURE_ENV_NAME:-}" ] && [ "$found_env" = "$AZURE_ENV_NAME" ] \
                       && own=true ;;
  esac
  if [ -n "$found_id" ] && [ "$own" = false ]; then
    echo "pre-provision: reusing the account's Event Grid system topic ${found_id##*/} (an account has at most one)"
    [ "$found_id" = "$current_topic" ] || azd_set SEGMENTS_SYSTEM_TOPIC_ID "$found_id"
  else
    if [ -n "$found_id" ]; then
      echo "pre-provision: the account's Event Grid system topic ${found_id##*/} is this environment's own"
    else
      echo "pre-provision: the account has no Event Grid system topic yet: the template creates one"
    fi
    [ -z "$current_topic" ] || azd_set SEGMENTS_SYSTEM_TOPIC_ID ""
  fi
else
  echo "pre-provision: WARNING: could not list the Event Grid system topics of subscription $seg_subscription;" \
       "keeping SEGMENTS_SYSTEM_TOPIC_ID='${current_topic}'. If the account already has a topic and this is empty," \
       "the deployment fails: set it with  azd env set SEGMENTS_SYSTEM_TOPIC_ID <topic resource ID>"
fi
