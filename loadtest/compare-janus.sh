#!/usr/bin/env bash
# Side-by-side capacity comparison: the same stamma-loadtest scenario against
# Stämma and against the Janus VideoRoom plugin, on this machine.
#
# Both servers run in a server network namespace and the load tester in a
# client one, joined by a veth pair. Loopback would be simpler, but Janus
# never offers loopback ICE candidates, and a real link keeps the two servers
# on equal footing.
#
# Usage: sudo loadtest/compare-janus.sh [SCENARIO [PARTICIPANTS [DURATION]]]
#        sudo loadtest/compare-janus.sh --scenario meeting-50 --participants 20 --duration 20s
# Options/environment: --scenario/SCENARIO, --participants/PARTICIPANTS,
# --duration/DURATION; --results-dir/RESULTS_DIR (where stamma.json and
# janus.json go, default: current directory); --no-build/NO_BUILD=1 to use
# already built binaries; CARGO_TARGET_DIR; LOADTEST to run another binary.
set -euo pipefail

SCENARIO=${SCENARIO:-meeting-50}
PARTICIPANTS=${PARTICIPANTS:-20}
DURATION=${DURATION:-20s}
RESULTS_DIR=${RESULTS_DIR:-$PWD}
NO_BUILD=${NO_BUILD:-0}

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "compare-janus: $*" >&2; exit 1; }

positional=()
while (($#)); do
    case "$1" in
        --scenario) SCENARIO=${2:?--scenario needs a value}; shift 2 ;;
        --participants) PARTICIPANTS=${2:?--participants needs a value}; shift 2 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift 2 ;;
        --results-dir) RESULTS_DIR=${2:?--results-dir needs a value}; shift 2 ;;
        --no-build) NO_BUILD=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
((${#positional[@]} <= 3)) || die "too many arguments (see --help)"
SCENARIO=${positional[0]:-$SCENARIO}
PARTICIPANTS=${positional[1]:-$PARTICIPANTS}
DURATION=${positional[2]:-$DURATION}
[[ $PARTICIPANTS =~ ^[0-9]+$ ]] || die "participants must be a number, got $PARTICIPANTS"

((EUID == 0)) || die "must run as root (network namespaces, veth)"
for tool in ip curl python3 openssl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
STAMMA=$TARGET_DIR/release/stamma
LOADTEST=${LOADTEST:-$TARGET_DIR/release/stamma-loadtest}
mkdir -p "$RESULTS_DIR"
RESULTS_DIR=$(cd "$RESULTS_DIR" && pwd)

SRV_NS=stamma-bench-srv
CLI_NS=stamma-bench-cli
SRV_IF=sbench-srv # interface names are limited to 15 bytes
CLI_IF=sbench-cli
# 198.18.0.0/15 is reserved for benchmarking (RFC 2544): never a real network.
SRV_IP=198.18.0.1
CLI_IP=198.18.0.2
JANUS_WS_PORT=8188
STAMMA_HTTP_PORT=7880
STAMMA_MEDIA_PORT=7881
JANUS_RTP_PORTS=20000-29999

WORK=
JANUS_PID=
STAMMA_PID=
LOAD_PID=

stop() {
    local pid=$1
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    stop "$LOAD_PID"
    stop "$JANUS_PID"
    stop "$STAMMA_PID"
    if ((rc != 0)) && [[ -n $WORK ]]; then
        for log in "$WORK"/janus.log "$WORK"/stamma.log; do
            [[ -s $log ]] && { echo "--- last lines of $log" >&2; tail -n 25 "$log" >&2; }
        done
    fi
    # Deleting a namespace takes its end of the veth pair, and with it the peer.
    ip netns del "$SRV_NS" 2>/dev/null
    ip netns del "$CLI_NS" 2>/dev/null
    ip link del "$SRV_IF" 2>/dev/null
    [[ -n $WORK ]] && rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "compare-janus: command failed at line $LINENO" >&2' ERR
trap 'exit 130' INT TERM

# --- build and install -------------------------------------------------------

if [[ $NO_BUILD != 1 ]]; then
    (cd "$REPO" && cargo build --release -p stamma -p stamma-loadtest)
fi
[[ -x $STAMMA ]] || die "$STAMMA not found (build it, or set CARGO_TARGET_DIR)"
[[ -x $LOADTEST ]] || die "$LOADTEST not found"

if ! command -v janus >/dev/null; then
    echo "Installing Janus from Debian..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends janus ||
        { apt-get update && apt-get install -y --no-install-recommends janus; }
fi
JANUS=$(command -v janus)
# Take the module folders from the package rather than hard-coding the multiarch path.
# awk reads the whole list: an early exit (grep -m1) would SIGPIPE dpkg and,
# with pipefail, abort the script.
JANUS_LIB=$(dpkg -L janus | awk '/\/janus\/plugins$/ && !found { sub(/\/plugins$/, ""); print; found = 1 }')
[[ -d $JANUS_LIB/plugins && -d $JANUS_LIB/transports ]] || die "cannot find Janus's plugin folders"

WORK=$(mktemp -d /tmp/stamma-bench.XXXXXX)

# --- network -----------------------------------------------------------------

# Leftovers of a run that was killed too hard to clean up.
ip netns del "$SRV_NS" 2>/dev/null || true
ip netns del "$CLI_NS" 2>/dev/null || true
ip link del "$SRV_IF" 2>/dev/null || true

ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip link add "$SRV_IF" type veth peer name "$CLI_IF"
ip link set "$SRV_IF" netns "$SRV_NS"
ip link set "$CLI_IF" netns "$CLI_NS"
ip -n "$SRV_NS" addr add "$SRV_IP/30" dev "$SRV_IF"
ip -n "$CLI_NS" addr add "$CLI_IP/30" dev "$CLI_IF"
for ns in "$SRV_NS" "$CLI_NS"; do
    ip -n "$ns" link set lo up
done
ip -n "$SRV_NS" link set "$SRV_IF" up
ip -n "$CLI_NS" link set "$CLI_IF" up
if command -v ping >/dev/null; then
    ip netns exec "$CLI_NS" ping -c1 -W2 "$SRV_IP" >/dev/null ||
        die "no link between the namespaces"
fi

# --- Janus -------------------------------------------------------------------

# Only the VideoRoom plugin and the WebSocket transport: every other module
# would cost startup time and sockets and is not part of the comparison.
disable_except() {
    local dir=$1 keep=$2
    (cd "$dir" && ls -- *.so) | grep -vx "$keep" | paste -sd, -
}
JANUS_CFG=$WORK/janus
mkdir -p "$JANUS_CFG"
cat >"$JANUS_CFG/janus.jcfg" <<EOF
general: {
	configs_folder = "$JANUS_CFG"
	plugins_folder = "$JANUS_LIB/plugins"
	transports_folder = "$JANUS_LIB/transports"
	events_folder = "$JANUS_LIB/events"
	loggers_folder = "$JANUS_LIB/loggers"
	# Warnings and errors only: info-level logging per handle would tax Janus
	# for something Stämma does not do either.
	debug_level = 3
	session_timeout = 60
	# The address for the SDP c= line; Janus cannot guess it in a namespace.
	interface = "$SRV_IP"
}
media: {
	ipv6 = false
	rtp_port_range = "$JANUS_RTP_PORTS"
}
nat: {
	# Only the veth address; no STUN, no 1:1 NAT mapping.
	ice_enforce_list = "$SRV_IP"
	full_trickle = false
	ice_lite = false
	ice_tcp = false
}
plugins: {
	disable = "$(disable_except "$JANUS_LIB/plugins" libjanus_videoroom.so)"
}
transports: {
	disable = "$(disable_except "$JANUS_LIB/transports" libjanus_websockets.so)"
}
loggers: {
	disable = "$(cd "$JANUS_LIB/loggers" && ls -- *.so 2>/dev/null | paste -sd, -)"
}
events: {
	broadcast = false
}
EOF
cat >"$JANUS_CFG/janus.transport.websockets.jcfg" <<EOF
general: {
	json = "plain"
	ws = true
	ws_port = $JANUS_WS_PORT
	ws_ip = "$SRV_IP"
	wss = false
}
admin: {
	admin_ws = false
	admin_wss = false
}
EOF
# No sample rooms: the load tester creates its own.
cat >"$JANUS_CFG/janus.plugin.videoroom.jcfg" <<EOF
general: {
}
EOF

# `ip netns exec` execs the command, so $! is the server's own pid in the
# root pid namespace, which is what --server-pid samples.
(
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true # many sockets per participant
    exec ip netns exec "$SRV_NS" "$JANUS" --config="$JANUS_CFG/janus.jcfg" \
        --configs-folder="$JANUS_CFG" --disable-colors
) >"$WORK/janus.log" 2>&1 &
JANUS_PID=$!

wait_until() {
    local what=$1 pid=$2
    shift 2
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || die "$what exited during startup"
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "$what not ready after 20 s"
}
wait_until "Janus" "$JANUS_PID" \
    ip netns exec "$SRV_NS" bash -c "exec 3<>/dev/tcp/$SRV_IP/$JANUS_WS_PORT"
echo "Janus $("$JANUS" --version 2>/dev/null | sed -n 's/^Janus version: .*(\(.*\))/\1/p') ready (pid $JANUS_PID) on ws://$SRV_IP:$JANUS_WS_PORT"

# --- Stämma ------------------------------------------------------------------

SECRET=$(openssl rand -hex 24)
cat >"$WORK/stamma.toml" <<EOF
[http]
bind = "$SRV_IP:$STAMMA_HTTP_PORT"
[media]
bind_ip = "$SRV_IP"
port = $STAMMA_MEDIA_PORT
workers = 2
[[keys]]
id = "bench"
secret = "$SECRET"
EOF
(
    ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true # many sockets per participant
    RUST_LOG=warn exec ip netns exec "$SRV_NS" "$STAMMA" serve --config "$WORK/stamma.toml"
) >"$WORK/stamma.log" 2>&1 &
STAMMA_PID=$!
wait_until "Stämma" "$STAMMA_PID" \
    ip netns exec "$SRV_NS" curl -fsS -m 1 "http://$SRV_IP:$STAMMA_HTTP_PORT/healthz"
echo "Stämma ready (pid $STAMMA_PID) on http://$SRV_IP:$STAMMA_HTTP_PORT"

# --- load --------------------------------------------------------------------

common=(--scenario "$SCENARIO" --participants "$PARTICIPANTS" --duration "$DURATION")

# In the background and waited for: bash runs traps only between foreground
# commands, so a TERM would otherwise wait out the whole load run.
load() {
    ip netns exec "$CLI_NS" "$LOADTEST" "$@" "${common[@]}" &
    LOAD_PID=$!
    local rc=0
    wait "$LOAD_PID" || rc=$?
    LOAD_PID=
    # 1 means the run finished but broke a bound: still a result to compare.
    ((rc <= 1)) || die "the load tester failed (exit $rc)"
}

echo "== Stämma: $SCENARIO, $PARTICIPANTS participants, $DURATION"
load --url "http://$SRV_IP:$STAMMA_HTTP_PORT" --api-key bench --api-secret "$SECRET" \
    --server-pid "$STAMMA_PID" --json "$RESULTS_DIR/stamma.json"
kill -0 "$STAMMA_PID" 2>/dev/null || die "Stämma died during the run"

echo "== Janus: $SCENARIO, $PARTICIPANTS participants, $DURATION"
load --target janus --janus-url "ws://$SRV_IP:$JANUS_WS_PORT" \
    --server-pid "$JANUS_PID" --json "$RESULTS_DIR/janus.json"
kill -0 "$JANUS_PID" 2>/dev/null || die "Janus died during the run"

# --- report ------------------------------------------------------------------

python3 - "$RESULTS_DIR/stamma.json" "$RESULTS_DIR/janus.json" <<'EOF'
import json, sys

runs = []
for path in sys.argv[1:]:
    with open(path) as f:
        runs.append(json.load(f))

def get(r, *keys):
    for k in keys:
        if not isinstance(r, dict) or r.get(k) is None:
            return None
        r = r[k]
    return r

def num(v, digits=1):
    return "-" if v is None else f"{v:,.{digits}f}"

def tracks(r):
    got, want = get(r, "tracks_received"), get(r, "tracks_expected")
    return "-" if got is None or want is None else f"{got}/{want}"

def cpu_per_million(r):
    secs, pkts = get(r, "server_cpu_seconds"), get(r, "forwarded_packets")
    return None if secs is None or not pkts else secs / (pkts / 1e6)

rows = [
    ("participants", lambda r: num(get(r, "participants"), 0)),
    ("tracks received/expected", tracks),
    ("loss %", lambda r: num(get(r, "loss_pct"), 2)),
    ("latency p99 ms", lambda r: num(get(r, "latency_ms", "p99"))),
    ("join p50 ms", lambda r: num(get(r, "join_ms", "p50"), 0)),
    ("join p99 ms", lambda r: num(get(r, "join_ms", "p99"), 0)),
    ("forwarded packets/s", lambda r: num(get(r, "forwarded_pps"), 0)),
    ("server CPU %", lambda r: num(get(r, "server_cpu_pct"))),
    ("CPU-s per M fwd packets", lambda r: num(cpu_per_million(r), 2)),
    ("passed", lambda r: {True: "yes", False: "NO"}.get(get(r, "passed"), "-")),
]
names = ["Stämma", "Janus"]
w0 = max(len(label) for label, _ in rows)
cells = [[f(r) for r in runs] for _, f in rows]
w = max(12, *(len(c) for row in cells for c in row))
print(f"\nscenario {get(runs[0], 'scenario') or '-'}, {num(get(runs[0], 'duration_s'), 0)} s")
print(f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n in names))
for (label, _), row in zip(rows, cells):
    print(f"{label:<{w0}}  " + "  ".join(f"{c:>{w}}" for c in row))
EOF
