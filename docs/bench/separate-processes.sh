#!/usr/bin/env bash
# `wxpay bench` against separate processes on this machine: `wxpay sim`, `wxpay serve` (SQLite
# in a temp dir, synchronous=FULL, workers on, tick 50 ms) and a tiny webhook receiver, so that
# the report's `cpu` object has the server's and the simulator's CPU per flow (from their
# `/metrics` and `/sim/metrics`) next to the load generator's own.
#
#   docs/bench/separate-processes.sh SCENARIO CONCURRENCY DURATION [bench args...]
#   PERF=out.data docs/bench/separate-processes.sh miniprogram 64 10   # also perf-record the server
#   EMBEDDED=1 ...   # one `wxpay serve` with its embedded simulator (the memory measurement)
#   KEEP_LOGS=dir ... # keep the server's and the simulator's logs (RUST_LOG, default warn)
#   COUNT=3000 docs/bench/separate-processes.sh notify-storm 64 60   # --count (notify-storm needs it)
#
# B (default ./target/release/wxpay) is the binary. Ports: 18070 (webhook), 18080 (server),
# 18090 (simulator).
set -euo pipefail
B=${B:-./target/release/wxpay}
SCENARIO=${1:-miniprogram}
C=${2:-64}
D=${3:-10}
shift $(( $# < 3 ? $# : 3 ))
DIR=$(mktemp -d)
TOKEN=bench-separate-token
SRV=http://127.0.0.1:18080
SIM=http://127.0.0.1:18090
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${KEEP_LOGS:-}" ]; then mkdir -p "$KEEP_LOGS" && cp "$DIR"/*.log "$KEEP_LOGS"/; fi
  rm -rf "$DIR"
}
trap cleanup EXIT

python3 - <<'PY' >"$DIR/hook.log" 2>&1 &
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", 18070), H).serve_forever()
PY
pids+=($!)

export RUST_LOG=${RUST_LOG:-warn}
if [ -z "${EMBEDDED:-}" ]; then
  "$B" sim --listen 127.0.0.1:18090 >"$DIR/sim.log" 2>&1 &
  pids+=($!)
  SIM_SETTINGS=(WXPAY_SIMULATOR__ENABLED=false WXPAY_WECHAT__PAY_BASE_URL=$SIM WXPAY_WECHAT__SNS_BASE_URL=$SIM)
else
  SIM_SETTINGS=(WXPAY_SIMULATOR__ENABLED=true WXPAY_SIMULATOR__LISTEN=127.0.0.1:18090)
fi
env "${SIM_SETTINGS[@]}" \
  WXPAY_SERVER__LISTEN=127.0.0.1:18080 WXPAY_SERVER__PUBLIC_URL=$SRV WXPAY_SERVER__ADMIN_TOKEN=$TOKEN \
  WXPAY_SERVER__AUTH_PER_MINUTE=1000000000 WXPAY_SERVER__AUTH_BURST=1000000000 \
  WXPAY_DATABASE__URL="sqlite://$DIR/bench.db" WXPAY_ORDERS__SEED_DEMO_CATALOGUE=true \
  WXPAY_WORKERS__ENABLED=true WXPAY_WORKERS__TICK_MS=50 WXPAY_WEBHOOK__URL=http://127.0.0.1:18070/hook \
  "$B" serve >"$DIR/serve.log" 2>&1 &
SERVER_PID=$!
pids+=($SERVER_PID)
for _ in $(seq 1 100); do
  curl -sf "$SRV/healthz" >/dev/null 2>&1 && curl -sf "$SIM/sim/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "server pid $SERVER_PID, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [ -n "${PERF:-}" ]; then
  perf record -e cpu-clock -F "${PERF_HZ:-499}" --call-graph dwarf,32768 -p "$SERVER_PID" -o "$PERF" \
    >"$DIR/perf.log" 2>&1 &
  PERF_PID=$!
fi
"$B" bench --scenario "$SCENARIO" --server $SRV --sim $SIM --admin-token $TOKEN \
  --concurrency "$C" --duration "$D" --count "${COUNT:-100000000}" "$@" || status=$?
if [ -n "${PERF:-}" ]; then kill -INT "$PERF_PID"; wait "$PERF_PID" || true; fi
# Context switches of the server's live threads since start (thread hand-offs; dead threads not counted).
CS=$(cat /proc/$SERVER_PID/task/*/status 2>/dev/null | awk '/ctxt_switches/ {n += $2} END {print n}')
echo "server VmHWM: $(grep VmHWM /proc/$SERVER_PID/status | tr -s ' '), context switches: $CS, load average: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit ${status:-0}
