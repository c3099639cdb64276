#!/usr/bin/env bash
# claimgate on a real Istio mesh in kind: creates a cluster, installs Istio, deploys Keycloak
# (realm imported) and the sample scoring server, serves the built claimgate.wasm inside the
# cluster, applies the compiled policy's WasmPlugin, and checks allowed and denied calls with
# curl, then a live revocation.
#
#   e2e/kind/run.sh            run it (needs docker, kind, kubectl, istioctl, python3)
#   e2e/kind/run.sh --dry-run  print every command instead of running it
#   e2e/kind/run.sh --keep     leave the cluster up afterwards
#
# Build first (scripts/setup builds the CLI and the .wasm).
set -euo pipefail

cd "$(dirname "$0")/../.."

CLUSTER="${CLUSTER:-claimgate}"
ISTIO_PROFILE="${ISTIO_PROFILE:-minimal}"
POLICY="e2e/kind/policy.toml"
WASM="target/wasm32-wasip1/release/claimgate_filter.wasm"
CLAIMGATE="target/release/claimgate"
WASM_URL="http://wasm-server.claimgate-system.svc.cluster.local/claimgate.wasm"
KEYCLOAK="http://keycloak.keycloak.svc.cluster.local:8080/realms/ml"
SCORING="http://fraud-scoring.ml-serving.svc.cluster.local:8080"
WORK="$(mktemp -d)"

DRY_RUN=0
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 1 ;;
  esac
done

# Echoes a command on stderr, quoted so that it can be pasted into a shell; bearer tokens
# are never printed.
show() {
  local arg
  {
    printf '+'
    for arg in "$@"; do
      case "$arg" in
        "authorization: Bearer "*) arg="authorization: Bearer <token>" ;;
      esac
      printf ' %q' "$arg"
    done
    printf '\n'
  } >&2
}

# Runs a command, or only prints it in dry-run mode.
run() {
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

# Prints a command and captures its output (a placeholder in dry-run mode).
capture() {
  local placeholder="$1"
  shift
  show "$@"
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  else
    printf '%s' "$placeholder"
  fi
}

need() {
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      if [ "$DRY_RUN" = 1 ]; then
        echo "# (dry run) $tool is not installed here"
      else
        echo "kind path: $tool is required" >&2
        exit 1
      fi
    fi
  done
}

cleanup() {
  rm -rf "$WORK"
  if [ "$KEEP" = 0 ]; then
    run kind delete cluster --name "$CLUSTER"
  else
    echo "cluster $CLUSTER kept; delete it with: kind delete cluster --name $CLUSTER"
  fi
}

# In-cluster curl from a pod outside the mesh; prints the HTTP status only.
http_status() {
  capture 200 kubectl exec -n clients curl -- curl -s -o /dev/null -w '%{http_code}' "$@"
}

# Retries until the call answers the expected status (the plugin loads asynchronously).
expect() {
  local want="$1" what="$2" got=""
  shift 2
  for _ in $(seq 1 60); do
    got="$(http_status "$@")"
    if [ "$DRY_RUN" = 1 ]; then
      echo "(dry run) would expect $want: $what"
      return 0
    fi
    if [ "$got" = "$want" ]; then
      echo "ok   $what: $want"
      return 0
    fi
    sleep 2
  done
  echo "FAIL $what: want $want, got $got" >&2
  exit 1
}

# A client-credentials token from the realm's token endpoint.
token_for() {
  local client="$1"
  local call=(kubectl exec -n clients curl -- curl -s -d grant_type=client_credentials
    -d "client_id=$client" -d "client_secret=${client}-secret" "$KEYCLOAK/protocol/openid-connect/token")
  show "${call[@]}"
  if [ "$DRY_RUN" = 1 ]; then
    printf 'TOKEN_FOR_%s' "$client"
    return
  fi
  "${call[@]}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}

# The `sub` claim of a token (read, not verified: it names whom to revoke).
subject_of() {
  if [ "$DRY_RUN" = 1 ]; then
    printf 'SUBJECT_OF_TOKEN'
    return
  fi
  python3 -c 'import base64, json, sys; p = sys.argv[1].split(".")[1]; print(json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))["sub"])' "$1"
}

need docker kind kubectl istioctl python3
for built in "$WASM" "$CLAIMGATE"; do
  if [ ! -e "$built" ]; then
    echo "kind path: $built is missing; run scripts/setup first" >&2
    [ "$DRY_RUN" = 1 ] || exit 1
  fi
done

echo "== cluster and Istio"
run kind create cluster --name "$CLUSTER" --wait 180s
trap cleanup EXIT
run istioctl install -y --set profile="$ISTIO_PROFILE"

echo "== Keycloak, scoring server, module server"
run kubectl apply -f manifests/keycloak.yaml
run kubectl apply -f manifests/scoring.yaml
run kubectl apply -f manifests/wasm-server.yaml
run kubectl create namespace clients
run kubectl run curl -n clients --image=curlimages/curl:8.11.1 --restart=Never --command -- sleep infinity
run kubectl rollout status -n keycloak deployment/keycloak --timeout=300s
run kubectl rollout status -n ml-serving deployment/fraud-scoring --timeout=180s
run kubectl rollout status -n claimgate-system deployment/wasm-server --timeout=120s
run kubectl wait -n clients --for=condition=Ready pod/curl --timeout=120s

echo "== the module, served in-cluster"
WASM_POD="$(capture wasm-server-pod kubectl get pod -n claimgate-system -l app=wasm-server -o 'jsonpath={.items[0].metadata.name}')"
run kubectl cp "$WASM" "claimgate-system/$WASM_POD:/usr/share/nginx/html/claimgate.wasm"

echo "== the policy's WasmPlugin"
run "$CLAIMGATE" manifest "$POLICY" --wasm-url "$WASM_URL" --wasm "$WASM" \
  --namespace ml-serving --selector app=fraud-scoring --port 8080 -o "$WORK/claimgate.yaml"
run kubectl apply -f "$WORK/claimgate.yaml"

echo "== calls"
PIPELINE="$(token_for fraud-pipeline)"
REPORTING="$(token_for reporting)"
expect 401 "no token" -X POST "$SCORING/score"
expect 200 "fraud-pipeline (ml-scorer)" -X POST -H "authorization: Bearer $PIPELINE" "$SCORING/score"
expect 403 "reporting (no ml-scorer)" -X POST -H "authorization: Bearer $REPORTING" "$SCORING/score"
expect 401 "garbled token" -X POST -H "authorization: Bearer not.a.jwt" "$SCORING/score"
expect 200 "health is public" "$SCORING/healthz"

echo "== live revocation"
SUBJECT="$(subject_of "$PIPELINE")"
run cp "$POLICY" "$WORK/revoked.toml"
run sed -i "s/^subjects = \[\]/subjects = [\"$SUBJECT\"]/" "$WORK/revoked.toml"
run "$CLAIMGATE" manifest "$WORK/revoked.toml" --wasm-url "$WASM_URL" --wasm "$WASM" \
  --namespace ml-serving --selector app=fraud-scoring --port 8080 -o "$WORK/claimgate-revoked.yaml"
run kubectl apply -f "$WORK/claimgate-revoked.yaml"
expect 401 "fraud-pipeline after revocation" -X POST -H "authorization: Bearer $PIPELINE" "$SCORING/score"

if [ "$DRY_RUN" = 1 ]; then
  echo "kind path: dry run printed every command; nothing was run"
else
  echo "kind path: all checks passed"
fi
