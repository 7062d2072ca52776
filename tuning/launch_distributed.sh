#!/usr/bin/env bash
# Distributed `deeplense tune`: KerasTuner's chief/worker mode. The chief serves the oracle
# (which hyperparameters to try next) over gRPC and writes the results; each worker asks it
# for trials and trains them. Every process gets the same tune arguments and three
# environment variables: KERASTUNER_TUNER_ID (chief, tuner0, tuner1 ...),
# KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (where the chief listens).
#
# One machine (chief + N workers here; logs in OUT/launch-logs/):
#   tuning/launch_distributed.sh --workers 2 -- --data data/model2 --out tune/resnet \
#       --model resnet --tuner bayesian --max-trials 20
#
# Several machines (OUT on a folder they all see, e.g. NFS; the chief's IP reachable):
#   chief machine:    tuning/launch_distributed.sh --role chief --ip 10.0.0.1 --port 8000 -- ARGS
#   each worker:      tuning/launch_distributed.sh --role worker --id tuner1 --ip 10.0.0.1 --port 8000 -- ARGS
#
# Options:
#   --workers N      workers to start on this machine (default 2; local mode)
#   --ip IP          the chief's address (default 127.0.0.1)
#   --port PORT      the chief's port (default: a free one in local mode; required otherwise)
#   --role ROLE      chief | worker: start only this one process (several-machine mode)
#   --id ID          the worker's id with --role worker (tuner0, tuner1 ...; unique per worker)
#   --dry-run        print the commands instead of running them
# Environment: PYTHON (default python3) runs `$PYTHON -m deeplense_tf tune ARGS`.
#
# In local mode the workers start first and the chief once every worker waits for it, so
# all of them take part from the first trial. Interrupting the script stops the processes
# it started; running it again with the same arguments resumes the search.
set -euo pipefail

PYTHON=${PYTHON:-python3}
WORKERS=2
IP=127.0.0.1
PORT=""
ROLE=""
ID=""
DRY_RUN=0
READY_TIMEOUT=${READY_TIMEOUT:-900}  # seconds to wait for the workers to be ready

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
die() { echo "launch_distributed.sh: error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) WORKERS=${2:?--workers needs a number}; shift 2 ;;
    --ip) IP=${2:?--ip needs an address}; shift 2 ;;
    --port) PORT=${2:?--port needs a number}; shift 2 ;;
    --role) ROLE=${2:?--role needs chief or worker}; shift 2 ;;
    --id) ID=${2:?--id needs a tuner id}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option $1 (tune arguments go after --)" ;;
  esac
done
TUNE_ARGS=("$@")
[[ ${#TUNE_ARGS[@]} -gt 0 ]] || die "no tune arguments; give them after --, e.g. -- --data DIR --out DIR"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "--workers must be a positive integer, got $WORKERS"

# The search folder (for the logs), from the tune arguments.
OUT=""
for ((i = 0; i < ${#TUNE_ARGS[@]}; i++)); do
  if [[ "${TUNE_ARGS[$i]}" == "--out" && $((i + 1)) -lt ${#TUNE_ARGS[@]} ]]; then OUT=${TUNE_ARGS[$((i + 1))]}; fi
  if [[ "${TUNE_ARGS[$i]}" == --out=* ]]; then OUT=${TUNE_ARGS[$i]#--out=}; fi
done
[[ -n "$OUT" ]] || die "the tune arguments need --out DIR"

run_one() {  # run_one ID: the tune command for one process, in the foreground
  local id=$1
  if [[ $DRY_RUN == 1 ]]; then
    echo "KERASTUNER_TUNER_ID=$id KERASTUNER_ORACLE_IP=$IP KERASTUNER_ORACLE_PORT=$PORT $PYTHON -m deeplense_tf tune ${TUNE_ARGS[*]}"
    return 0
  fi
  KERASTUNER_TUNER_ID=$id KERASTUNER_ORACLE_IP=$IP KERASTUNER_ORACLE_PORT=$PORT \
    exec "$PYTHON" -m deeplense_tf tune "${TUNE_ARGS[@]}"
}

if [[ -n "$ROLE" ]]; then  # several machines: this machine runs one process
  [[ -n "$PORT" ]] || die "--role needs --port (the same on every machine)"
  case "$ROLE" in
    chief) run_one chief ;;
    worker) [[ -n "$ID" && "$ID" != *chief* ]] || die "--role worker needs --id (tuner0, tuner1 ...; not containing 'chief')"
            run_one "$ID" ;;
    *) die "--role must be chief or worker, got $ROLE" ;;
  esac
  exit 0
fi

if [[ -z "$PORT" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
if [[ $DRY_RUN == 1 ]]; then
  for ((w = 0; w < WORKERS; w++)); do run_one "tuner$w"; done
  run_one chief
  exit 0
fi

LOGS="$OUT/launch-logs"
mkdir -p "$LOGS"
PIDS=()
NAMES=()
cleanup() {  # stop what this script started, if still running
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'echo "launch_distributed.sh: interrupted; re-run the same command to resume" >&2; exit 130' INT TERM

for ((w = 0; w < WORKERS; w++)); do
  (run_one "tuner$w") >"$LOGS/tuner$w.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("tuner$w")
  echo "worker tuner$w: pid $!, log $LOGS/tuner$w.log"
done

# Start the chief once every worker waits for it (or has died: then stop).
start=$SECONDS
for ((w = 0; w < WORKERS; w++)); do
  until grep -q "waiting for the chief oracle" "$LOGS/tuner$w.log" 2>/dev/null; do
    if ! kill -0 "${PIDS[$w]}" 2>/dev/null; then
      echo "launch_distributed.sh: worker tuner$w exited before the search began:" >&2
      tail -n 5 "$LOGS/tuner$w.log" >&2
      exit 1
    fi
    if ((SECONDS - start > READY_TIMEOUT)); then
      die "workers not ready after ${READY_TIMEOUT}s; see $LOGS"
    fi
    sleep 0.5
  done
done
(run_one chief) >"$LOGS/chief.log" 2>&1 &
PIDS+=($!)
NAMES+=(chief)
echo "chief: pid $! on $IP:$PORT, log $LOGS/chief.log"

# Wait for everyone. A process that fails leaves the others waiting for it (workers
# for the oracle, the chief for the failed worker's trial): stop them all then.
declare -A DONE=()
status=0
while :; do
  running=0
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    [[ -n "${DONE[$pid]:-}" ]] && continue
    if kill -0 "$pid" 2>/dev/null; then running=1; continue; fi
    rc=0
    wait "$pid" || rc=$?
    DONE[$pid]=$rc
    if [[ $rc != 0 ]]; then
      echo "launch_distributed.sh: ${NAMES[$i]} failed (exit $rc); see $LOGS/${NAMES[$i]}.log" >&2
      tail -n 3 "$LOGS/${NAMES[$i]}.log" >&2
      status=1
    fi
  done
  [[ $running == 0 || $status != 0 ]] && break
  sleep 1
done
cleanup
PIDS=()
if [[ $status == 0 ]]; then
  grep "^wrote \|^best trial\|new trials" "$LOGS/chief.log" || true
fi
exit $status
