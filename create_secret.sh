#!/usr/bin/env bash
# Creates or updates a Kubernetes Secret of S3 credentials:
# - `awsconfig`, the gateway's own credentials (results_writer_policy.json:
#   list, read, write and delete), which its pod alone reads;
# - with --workers, `gateway-results-workers`, the credentials of the workers
#   of the gateway's own Dask clusters (results_workers_policy.json: put
#   results and get their sources, nothing else), which Dask Gateway mounts
#   into those workers alone (dask_gateway_config.yaml);
# - with --readers, `gateway-results-reader`, read-only credentials
#   (results_reader_policy.json) for an operator who chooses to hand notebooks
#   a key (docs/security.md).
# The gateway's JupyterHub token is in zero-to-jupyterhub's own `hub` Secret.
#
#   ./create_secret.sh [-n NAMESPACE] [--workers | --readers] [--dry-run] [CONFIG_FILE]
#
# CONFIG_FILE (default: my_aws_config, my_aws_workers_config with --workers,
# or my_aws_reader_config with --readers)
# holds KEY=VALUE lines; see my_aws_config.example. The Secret is created, or
# replaced when it exists. --dry-run prints it, every value redacted, and changes nothing. No secret value is
# ever printed: values go to kubectl through a private temporary file, never on
# a command line.
set -euo pipefail

REQUIRED_KEYS=(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY)
OPTIONAL_KEYS=(AWS_ENDPOINT_URL AWS_DEFAULT_REGION)

usage() {
    echo "usage: $0 [-n NAMESPACE] [--workers | --readers] [--dry-run] [CONFIG_FILE]" >&2
    exit 2
}

fail() {
    echo "create_secret.sh: $*" >&2
    exit 1
}

namespace=""
dry_run=false
secret=writer
config_file=""
while [ $# -gt 0 ]; do
    case "$1" in
        -n | --namespace)
            [ $# -ge 2 ] || usage
            namespace=$2
            shift 2
            ;;
        --dry-run)
            dry_run=true
            shift
            ;;
        --readers | --workers)
            [ "$secret" = writer ] || usage
            secret=${1#--}
            shift
            ;;
        -h | --help) usage ;;
        -*) usage ;;
        *)
            config_file=$1
            shift
            ;;
    esac
done

case "$secret" in
    readers)
        SECRET_NAME=gateway-results-reader
        config_file=${config_file:-my_aws_reader_config}
        ;;
    workers)
        SECRET_NAME=gateway-results-workers
        config_file=${config_file:-my_aws_workers_config}
        ;;
    *)
        SECRET_NAME=awsconfig
        config_file=${config_file:-my_aws_config}
        ;;
esac

[ -f "$config_file" ] || fail "config file '$config_file' not found; copy my_aws_config.example to it and fill it in"

known_key() {
    local key
    for key in "${REQUIRED_KEYS[@]}" "${OPTIONAL_KEYS[@]}"; do
        [ "$key" = "$1" ] && return 0
    done
    return 1
}

env_file=$(mktemp)
chmod 600 "$env_file"
trap 'rm -f "$env_file"' EXIT

declare -A seen=()
line_number=0
while IFS= read -r line || [ -n "$line" ]; do
    line_number=$((line_number + 1))
    line=${line%$'\r'}
    case "$line" in
        '' | '#'*) continue ;;
    esac
    if [[ ! "$line" =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]]; then
        fail "$config_file line $line_number is not KEY=VALUE"
    fi
    key=${BASH_REMATCH[1]}
    value=${BASH_REMATCH[2]}
    known_key "$key" || fail "$config_file line $line_number: unknown key $key (expected ${REQUIRED_KEYS[*]} ${OPTIONAL_KEYS[*]})"
    [ -z "${seen[$key]:-}" ] || fail "$config_file line $line_number: $key is given twice"
    if [ -z "$value" ]; then
        # An empty optional key is as good as an absent one.
        [[ " ${OPTIONAL_KEYS[*]} " == *" $key "* ]] && continue
        fail "$config_file: $key is empty"
    fi
    seen[$key]=1
    printf '%s=%s\n' "$key" "$value" >>"$env_file"
done <"$config_file"

for key in "${REQUIRED_KEYS[@]}"; do
    [ -n "${seen[$key]:-}" ] || fail "$config_file: $key is missing"
done

create=(kubectl create secret generic "$SECRET_NAME" --from-env-file="$env_file" --dry-run=client -o yaml)
[ -n "$namespace" ] && create+=(--namespace "$namespace")

if $dry_run; then
    echo "# dry run: would create or replace this Secret (values redacted)"
    "${create[@]}" | sed -E '/^data:/,/^[^ ]/ s/^(  [A-Za-z0-9_]+): .*/\1: <redacted>/'
    exit 0
fi

# Created, or replaced whole when it exists: never `kubectl apply`, whose client-side
# form keeps a copy of the whole Secret, values and all, in its last-applied-configuration
# annotation, which `kubectl describe` shows. A replace drops an annotation left by an apply.
in_namespace=()
[ -n "$namespace" ] && in_namespace=(--namespace "$namespace")
existing=$(kubectl get secret "$SECRET_NAME" "${in_namespace[@]}" --ignore-not-found -o name)
verb=create
[ -z "$existing" ] || verb=replace
"${create[@]}" | kubectl "$verb" "${in_namespace[@]}" -f -
