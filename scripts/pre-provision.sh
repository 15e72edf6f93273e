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
# Needs the Azure CLI (`az login`).
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
