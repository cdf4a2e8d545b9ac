#!/usr/bin/env bash
# Lobby and the Python peer, back to back in one run, on the same models, photos and machine:
# per-stage latency on one thread, each model alone (tract vs onnxruntime), and closed-loop load
# over gRPC swept over concurrency. Prints the ratios, writes bench/results/load-vs-peer.png and
# appends everything to bench/RESULTS-log.md.
#
#   bash bench/peer/compare.sh [DATA]      (from the repository root; DATA defaults to ../shared/data)
#
# Env: DURATION (s per load level, default 20), LEVELS (default 1,2,4,8,16), PASSES (default 5),
# NO_RECORD=1 (print only; nothing appended to bench/RESULTS-log.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-${LOBBY_TEST_DATA:-../shared/data}}
DURATION=${DURATION:-20}
LEVELS=${LEVELS:-1,2,4,8,16}
PASSES=${PASSES:-5}
OUT=bench/out/compare
NR=(); [ "${NO_RECORD:-0}" = 1 ] && NR=(--no-record)
PY=bench/out/peer-venv/bin/python
export OMP_NUM_THREADS=1
rm -rf "$OUT" && mkdir -p "$OUT" bench/results

bash bench/peer/setup.sh
bash .ci/deps
cargo build --release -p lobby-service -p lobby-bench -p lobby-models
./target/release/lobby-models install --dest "$OUT/models" >/dev/null
export LOBBY_MODEL_DIR="$OUT/models"

echo "== stages and models, one thread: Lobby (tract), then the peer (onnxruntime)"
./target/release/lobby-stages --data "$DATA" --passes "$PASSES" --frames-out "$OUT/frames" --json "$OUT/stages-lobby.json" "${NR[@]}"
$PY bench/peer/peer.py stages --models "$OUT/models" --data "$DATA" --frames "$OUT/frames" --scratch "$OUT" --passes "$PASSES" > "$OUT/stages-peer.json"
$PY bench/peer/peer.py models --models "$OUT/models" --runs 50 > "$OUT/models-peer.json"

wait_port() { for _ in $(seq 1 120); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.5; done; return 1; }

echo "== load: Lobby"
LOBBY__LIMITS__KIOSK_FRAMES_PER_MINUTE=1000000 LOBBY__LIMITS__KIOSK_FRAME_BURST=100000 \
./target/release/lobby-server --data-dir "$OUT/server" --listen 127.0.0.1:50061 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; kill ${PEER:-0} 2>/dev/null || true' EXIT
wait_port 50061
./target/release/lobby-load --addr 127.0.0.1:50061 --token-file "$OUT/server/initial-tokens.txt" \
  --enrol-from "$DATA" --frames "$OUT/frames" --concurrency "$LEVELS" --duration "$DURATION" \
  --label lobby --json "$OUT/load-lobby.json" "${NR[@]}"
kill $SERVER; wait $SERVER 2>/dev/null || true

echo "== load: the peer"
$PY bench/peer/peer.py serve --models "$OUT/models" --data "$DATA" --scratch "$OUT" --port 50071 --workers 4 > "$OUT/peer.log" 2>&1 &
PEER=$!
wait_port 50071
./target/release/lobby-load --addr 127.0.0.1:50071 --frames "$OUT/frames" --concurrency "$LEVELS" \
  --duration "$DURATION" --label peer --json "$OUT/load-peer.json" "${NR[@]}"
kill $PEER; wait $PEER 2>/dev/null || true

RES=bench/RESULTS-log.md; [ "${NO_RECORD:-0}" = 1 ] && RES=/dev/null
$PY bench/peer/compare.py "$OUT" bench/results/load-vs-peer.png "$RES"
