#!/usr/bin/env bash
# enclave-kms on real SGX hardware, end to end, with a report to paste into an issue.
#
#   scripts/sgx-hardware-smoke.sh [--work DIR] [--collateral-service intel-pcs|pccs|azure-thim]
#                                 [--pccs-url URL] [--port N]
#
# Run from a checkout with `make .venv/.installed` done, on an SGX machine with Gramine (see
# docs/sgx-hardware.md). Steps: prerequisites, build + sign for Gramine, serve, attest with
# Intel's root and a pinned policy, init, create a key, encrypt, restart the server, decrypt
# and compare. Every step is PASS or FAIL; the first FAIL stops the run (later steps need it).
# The report goes to stdout and to WORK/report.txt; logs stay in WORK/. Nothing secret is
# printed (the admin token stays in WORK/kms-client/token, mode 0600).
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLI="${ENCLAVE_KMS_CLI:-$REPO/.venv/bin/enclave-kms}"
WORK="${TMPDIR:-/tmp}/ekms-sgx-smoke-$(date -u +%Y%m%dT%H%M%SZ)"
SERVICE=intel-pcs
PCCS_URL=""
PORT=8443

while [ $# -gt 0 ]; do
  case "$1" in
    --work) WORK=$2; shift 2 ;;
    --collateral-service) SERVICE=$2; shift 2 ;;
    --pccs-url) PCCS_URL=$2; shift 2 ;;
    --port) PORT=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

mkdir -p "$WORK"
REPORT="$WORK/report.txt"
: > "$REPORT"
URL="https://127.0.0.1:$PORT"
SERVER_PID=""
export ENCLAVE_KMS_CONFIG="$WORK/kms-client/config.toml"

say() { printf '%s\n' "$*" | tee -a "$REPORT"; }
pass() { say "PASS $1"; }
fail() {
  say "FAIL $1"
  [ -n "${2:-}" ] && [ -f "$2" ] && tail -n 25 "$2" | sed 's/^/     | /' | tee -a "$REPORT"
  finish 1
}
finish() {
  stop_server
  say "---"
  say "result: $([ "$1" -eq 0 ] && echo PASS || echo FAIL)   (logs: $WORK)"
  exit "$1"
}
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -INT "$SERVER_PID" 2>/dev/null
    for _ in $(seq 1 60); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
trap 'stop_server' EXIT

start_server() {  # $1: log file
  local args=(serve --platform gramine --gramine-dir "$WORK/gramine" --data-dir "$WORK/kms-data"
              --listen "127.0.0.1:$PORT" --collateral-service "$SERVICE")
  [ -n "$PCCS_URL" ] && args+=(--pccs-url "$PCCS_URL")
  "$CLI" "${args[@]}" > "$1" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do  # Gramine loads and hashes every trusted file: minutes, not seconds
    grep -q "is serving on" "$1" 2>/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || return 1
    sleep 1
  done
  return 1
}

say "enclave-kms SGX hardware smoke test, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "commit:   $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
say "kernel:   $(uname -r)"
say "cpu:      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
vm_size=unknown
if [ "$(cat /sys/devices/virtual/dmi/id/chassis_asset_tag 2>/dev/null)" = 7783-7084-3265-9085-8269-3286-77 ]; then
  vm_size="azure $(curl -sf -m 2 -H Metadata:true \
    'http://169.254.169.254/metadata/instance/compute/vmSize?api-version=2021-02-01&format=text' \
    2>/dev/null || echo '(IMDS unreachable)')"
fi
say "vm size:  $vm_size"
say "gramine:  $(gramine-sgx --version 2>/dev/null | head -n1 || echo 'not found')"
say "python:   $("$REPO/.venv/bin/python" -c 'import sys; print(sys.version.split()[0], sys.executable)' 2>/dev/null || echo 'no .venv')"
say "epc:      $(dmesg 2>/dev/null | grep -i 'EPC section' | head -n3 | tr '\n' ' ' || true)"
say "service:  $SERVICE ${PCCS_URL:-(default URL)}"
say "---"

# 1. prerequisites
missing=()
[ -x "$CLI" ] || missing+=("$CLI (run make .venv/.installed)")
for dev in /dev/sgx_enclave /dev/sgx_provision; do [ -e "$dev" ] || missing+=("$dev"); done
for tool in gramine-sgx gramine-manifest gramine-sgx-sign; do
  command -v "$tool" > /dev/null || missing+=("$tool")
done
systemctl is-active --quiet aesmd 2>/dev/null || [ -S /var/run/aesmd/aesm.socket ] \
  || missing+=("aesmd (sgx-aesm-service with the ECDSA plugins)")
[ ${#missing[@]} -eq 0 ] || { say "missing: ${missing[*]}"; fail "prerequisites"; }
pass "prerequisites (/dev/sgx_enclave, /dev/sgx_provision, aesmd, Gramine tools)"

# 2. build and sign
if [ ! -f "$WORK/signer.pem" ]; then
  "$CLI" enclave keygen --out "$WORK/signer.pem" > "$WORK/keygen.log" 2>&1 \
    || fail "keygen" "$WORK/keygen.log"
fi
"$CLI" enclave gramine --key "$WORK/signer.pem" --out "$WORK/gramine" > "$WORK/build.log" 2>&1 \
  || fail "build + sign (enclave gramine)" "$WORK/build.log"
[ -f "$WORK/gramine/enclave-kms.manifest.sgx" ] || fail "signed manifest written" "$WORK/build.log"
say "     $(grep -m1 '^mrsigner' "$WORK/build.log")"
say "     $(grep -i -m1 'mr_enclave\|measurement' "$WORK/build.log" | sed 's/^ *//' || true)"
pass "build + sign"

# 3. serve
start_server "$WORK/serve-1.log" || fail "serve (gramine-sgx enclave-kms)" "$WORK/serve-1.log"
say "     $(grep -m1 'MRENCLAVE' "$WORK/serve-1.log" | sed 's/^ *//')"
pass "serve"

# 4. attest with Intel's root, pin, attest against the pin
"$CLI" policy from-server "$URL" --out "$WORK/policy.toml" --force > "$WORK/policy.log" 2>&1 \
  || fail "attest with Intel's root (policy from-server)" "$WORK/policy.log"
"$CLI" attest "$URL" --policy "$WORK/policy.toml" > "$WORK/attest.log" 2>&1 \
  || fail "attest against the pinned policy" "$WORK/attest.log"
say "     $(grep -i -m1 'tcb' "$WORK/attest.log" | sed 's/^ *//' || true)"
pass "attest (Intel root, pinned policy)"

# 5. init, key, encrypt
"$CLI" init "$URL" --policy "$WORK/policy.toml" > "$WORK/init.log" 2>&1 \
  || fail "init (first admin token over attested TLS)" "$WORK/init.log"
"$CLI" key create smoke > "$WORK/key.log" 2>&1 || fail "key create" "$WORK/key.log"
PLAINTEXT="enclave-kms smoke $(date -u +%s)"
printf '%s' "$PLAINTEXT" | "$CLI" encrypt smoke > "$WORK/ciphertext" 2> "$WORK/encrypt.log" \
  || fail "encrypt" "$WORK/encrypt.log"
pass "init, key create, encrypt"

# 6. restart (unseal the storage root key on the same CPU), decrypt
stop_server
start_server "$WORK/serve-2.log" || fail "restart (unseal after restart)" "$WORK/serve-2.log"
"$CLI" attest "$URL" --policy "$WORK/policy.toml" > "$WORK/attest-2.log" 2>&1 \
  || fail "attest after restart" "$WORK/attest-2.log"
DECRYPTED=$("$CLI" decrypt smoke < "$WORK/ciphertext" 2> "$WORK/decrypt.log") \
  || fail "decrypt after restart" "$WORK/decrypt.log"
[ "$DECRYPTED" = "$PLAINTEXT" ] || fail "decrypted text matches"
pass "restart, decrypt, plaintext matches"

stray=$(grep -c 'stray output:' "$WORK/serve-1.log" "$WORK/serve-2.log" 2>/dev/null | awk -F: '{s+=$2} END {print s+0}')
say "     enclave stray output lines forwarded through the log OCALL: $stray"
finish 0
