#!/usr/bin/env bash
# Property-based test of the admin API (/api/v1) with schemathesis: starts
# `stamma dev` on loopback, mints a node-wide admin token and lets schemathesis
# generate requests from the served OpenAPI document. It fails on any 5xx, any
# status code, content type, header or body the document does not declare,
# schema-valid requests that are refused and schema-invalid ones that are
# accepted, and operations that work without the token.
#
# Usage: tests/api/schemathesis.sh [path/to/stamma]   (default: build it)
# Needs python3 with venv and network access to PyPI on the first run; the
# virtualenv lives in .venv-schemathesis/ (git-ignored) and is reused.
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
# Wall-clock bound of the whole run, installation excluded.
TIME_LIMIT_S="${SCHEMATHESIS_TIME_LIMIT_S:-300}"
venv=.venv-schemathesis

if [ ! -x "$venv/bin/schemathesis" ] || ! "$venv/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

stamma="${1:-}"
if [ -z "$stamma" ]; then
  cargo build --locked -p stamma --bin stamma --quiet
  target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  stamma="$target_dir/debug/stamma"
fi

work="$(mktemp -d)"
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# `stamma dev` prints its API key, secret and join links (with the bound
# address) on stdout; logs go to stderr.
RUST_LOG=warn "$stamma" dev --http 127.0.0.1:0 --media-port 0 >"$work/out" 2>"$work/log" &
server_pid=$!
for _ in $(seq 1 200); do
  grep -q "Join as host" "$work/out" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/log"; echo "stamma exited" >&2; exit 1; }
  sleep 0.05
done
key="$(sed -n 's/^ *API key: *//p' "$work/out")"
secret="$(sed -n 's/^ *API secret: *\([^ ]*\).*/\1/p' "$work/out")"
base="$(sed -n 's#^Join as host: *\(http://[^/]*\)/.*#\1#p' "$work/out")"
[ -n "$key" ] && [ -n "$secret" ] && [ -n "$base" ] || { cat "$work/out"; echo "could not read stamma dev's output" >&2; exit 1; }
token="$(STAMMA_API_KEY="$key" STAMMA_API_SECRET="$secret" "$stamma" token create --admin --ttl 1h)"

echo "==> schemathesis against $base/api/v1 (max $MAX_EXAMPLES examples per operation)"
start=$(date +%s)
status=0
timeout "$TIME_LIMIT_S" "$venv/bin/schemathesis" run "$base/api/v1/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --seed 1 \
  --request-timeout 10 \
  --no-color \
  --generation-database none \
  || status=$?
echo "==> schemathesis took $(( $(date +%s) - start )) s"
if [ "$status" -ne 0 ]; then
  echo "--- last server log lines" >&2
  tail -n 30 "$work/log" >&2
fi
exit "$status"
