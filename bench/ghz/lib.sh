# shellcheck shell=bash
# Shared by bench/run and bench/ghz/smoke (source it; bash): start and stop a
# runstore server on 127.0.0.1, render the CompleteRun configs, run one
# bounded ghz scenario. Needs RUNSTORE_BIN; sets BENCH_GHZ_DIR and REPO_ROOT.

BENCH_GHZ_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_GHZ_DIR/../.." && pwd)
FIXTURE="${BENCH_FIXTURE:-$REPO_ROOT/tests/fixtures/run-summary.json}"
# shellcheck source=bench/ghz/install-ghz
source "$BENCH_GHZ_DIR/install-ghz"

SERVER_PID=""
SERVER_ADDR=""

harness() { python3 "$BENCH_GHZ_DIR/harness.py" "$@"; }

# True while PID runs; a child that exited but was not reaped yet (a zombie)
# does not count, which `kill -0` alone would miss.
process_running() {
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# start_server DATA_DIR LOG [runstore serve flags...]
# Starts runstore on an ephemeral loopback port and waits (at most 20 s) for
# its JSON "listening" line; sets SERVER_PID and SERVER_ADDR.
start_server() {
  local data_dir=$1 log=$2 i
  shift 2
  "$RUNSTORE_BIN" serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --data-dir "$data_dir" \
    --log-format json "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  for ((i = 0; i < 200; i++)); do
    if SERVER_ADDR=$(harness listen-addr "$log"); then
      return 0
    fi
    if ! process_running "$SERVER_PID"; then
      echo "runstore exited before listening:" >&2
      cat "$log" >&2
      wait "$SERVER_PID" || true
      SERVER_PID=""
      return 1
    fi
    sleep 0.1
  done
  echo "runstore did not print its listening line within 20 s" >&2
  stop_server || true
  return 1
}

# Sends SIGTERM and waits for the exit (at most 40 s, past the server's 30 s
# default grace); fails unless the exit status is 0.
stop_server() {
  local pid=$SERVER_PID rc=0 i
  [[ -n "$pid" ]] || return 0
  SERVER_PID=""
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 400; i++)); do
    process_running "$pid" || break
    sleep 0.1
  done
  if process_running "$pid"; then
    echo "runstore (pid $pid) still running 40 s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" || rc=$?
  if ((rc != 0)); then
    echo "runstore exited with status $rc after SIGTERM (expected 0)" >&2
    return 1
  fi
}

# render_complete_run NAME OUT [--ids-from CONFIG]: bench/ghz/NAME.json with
# the fixture run summary (~2 KiB) as summary_json.
render_complete_run() {
  local name=$1 out=$2
  shift 2
  if [[ ! -f "$FIXTURE" ]]; then
    echo "run summary fixture not found: $FIXTURE (set BENCH_FIXTURE)" >&2
    return 1
  fi
  harness render-complete-run "$BENCH_GHZ_DIR/$name.json" "$FIXTURE" "$out" "$@"
}

# run_ghz CONFIG REPORT DURATION TOTAL CONCURRENCY CONNECTIONS
# One load run against SERVER_ADDR, bounded twice: ghz stops after TOTAL
# calls, and timeout(1) interrupts it at DURATION. (ghz ignores --total
# whenever --duration or --max-duration is set, so ghz's own flags cannot
# bound both.) On SIGINT ghz stops sending, lets the calls in flight finish
# (the configs set duration-stop "wait") and writes its JSON report, so a
# stop at the deadline leaves no cancelled calls behind.
run_ghz() {
  local config=$1 report=$2 duration=$3 total=$4 concurrency=$5 connections=$6
  timeout --preserve-status --signal INT --kill-after 30s "$duration" \
    "$GHZ" --config "$config" --insecure \
    --total "$total" --concurrency "$concurrency" --connections "$connections" \
    --format json --output "$report" "$SERVER_ADDR"
}
