#!/usr/bin/env bash
# Runs each fuzz target for a fixed number of executions, one after the other (one process on one
# core each: libFuzzer without -jobs/-workers), and prints executions, wall time, exec/s, coverage,
# corpus size and crashes per target.
#
#   tests/fuzz/run.sh [-n RUNS] [--cmin] [TARGET...]     (from anywhere; default: every target)
#
#   -n RUNS   executions per target (default 1000000)
#   --cmin    afterwards, merge what the run found with corpus/<target>/ into a minimal
#             corpus/<target>/ (libFuzzer -set_cover_merge=1: as `cargo fuzz cmin`, which uses
#             -merge=1, but a smaller set of inputs for the same features), keeping only inputs that add
#             coverage to seeds/<target>/; that folder is committed and replayed by
#             tests/tests/fuzz_corpus.rs
#   FUZZ_SANITIZER=address|none   (default address)
#   FUZZ_NO_BUILD=1               use the targets as last built (default: `cargo fuzz build` first)
#
# The targets are built once (cargo +nightly fuzz build: release, debug assertions and overflow
# checks on, the sanitizer, coverage instrumentation) and then run directly, so that the timings
# hold no build. Inputs: corpus/<target>/ and seeds/<target>/ (both committed; seeds come from
# seedgen/), with the dictionary dicts/<target>.dict where there is one. New inputs go to
# target/work/<target>/ (ignored); logs to target/logs/<target>.log; crashes, timeouts and OOMs to
# artifacts/<target>/ (ignored). A panic that the service itself contains (photo only: the image
# decoders', caught in vision/decode.rs) is counted and listed by place, not a crash. Reproduce one with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz <target> tests/fuzz/artifacts/<target>/<file>
# The photo target loads the real models (LOBBY_MODEL_DIR, default target/lobby-test-models, from
# LOBBY_MODEL_MIRROR, default ../shared/models).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

runs=1000000
cmin=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        -n) runs="$2"; shift 2 ;;
        --cmin) cmin=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#targets[@]} -gt 0 ] || targets=(photo health_qr api_request csv_import)
sanitizer="${FUZZ_SANITIZER:-address}"

# Inputs larger than the service could accept are refused before parsing; a little above each limit
# keeps the refusal itself fuzzed without spending executions on bulk.
max_len() {
    case "$1" in
        photo) echo 65536 ;;        # decoded photos are capped at 256x256 px (fuzzing::PHOTO_MAX_PIXELS)
        health_qr) echo 4096 ;;     # healthcode::MAX_QR_LEN = 2048
        api_request) echo 8192 ;;
        csv_import) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

# Seconds one input may take before libFuzzer calls it a hang. An analysed photo runs every model
# of an enrolment (up to three detector passes, three synthetic masks, liveness, the embedders, the
# second stage with flips): 0.4-10 s under ASan and coverage on one core (a 200x240 photo with a
# face took 9.2 s alone, ~0.1 s in a release build), more with the other core busy. A real hang
# still shows.
timeout_s() {
    case "$1" in
        photo) echo 60 ;;
        *) echo 10 ;;
    esac
}

mkdir -p "$here/target/logs"
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
    echo "== building (sanitizer $sanitizer) =="
    if ! cargo +nightly fuzz build --fuzz-dir "$here" -s "$sanitizer" >"$here/target/logs/build.log" 2>&1; then
        tail -30 "$here/target/logs/build.log"
        echo "build failed"
        exit 2
    fi
fi
bin_dir="$here/target/x86_64-unknown-linux-gnu/release"

# The service's thread pools: one thread each (the machine is shared; one core per fuzz job).
export OMP_NUM_THREADS=1 RAYON_NUM_THREADS=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"
summary=()
status=0

for t in "${targets[@]}"; do
    work="$here/target/work/$t"
    log="$here/target/logs/$t.log"
    mkdir -p "$work" "$here/corpus/$t" "$here/artifacts/$t"
    # Findings are crash-, timeout-, oom- and leak- files; slow-unit- files (libFuzzer's note of an
    # input over 10 s) are not.
    findings() { find "$here/artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l; }
    slow_units() { find "$here/artifacts/$t" -maxdepth 1 -type f -name 'slow-unit-*' | wc -l; }
    before=$(findings)
    slow_before=$(slow_units)
    common=(-max_len="$(max_len "$t")" -rss_limit_mb=4096 -timeout="$(timeout_s "$t")")
    opts=("${common[@]}" -runs="$runs" -print_final_stats=1 -artifact_prefix="$here/artifacts/$t/")
    [ ! -f "$here/dicts/$t.dict" ] || opts+=(-dict="$here/dicts/$t.dict")
    echo "== $t: $runs executions (sanitizer $sanitizer) =="
    start=$SECONDS
    set +e
    "$bin_dir/$t" "${opts[@]}" "$work" "$here/corpus/$t" "$here/seeds/$t" >"$log" 2>&1
    rc=$?
    set -e
    secs=$((SECONDS - start))
    stat() { awk -v k="stat::$1:" '$1 == k {v = $2} END {print v}' "$log"; }
    execs=$(stat number_of_executed_units)
    eps=$(stat average_exec_per_sec)
    rss=$(stat peak_rss_mb)
    slowest=$(stat slowest_unit_time_sec)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
    crashes=$(( $(findings) - before ))
    slow=$(( $(slow_units) - slow_before ))
    # Panics the service contained (photo: a decoder's, caught in vision/decode.rs), by place.
    contained=$(grep -c '^lobby-fuzz: panic' "$log" || true)
    places=$(grep -o "panicked at [^ ]*" "$log" | sed 's/panicked at //; s/:$//' | sort | uniq -c | sort -rn \
        | awk '{printf "%s%s x%s", (NR > 1 ? "; " : ""), $2, $1}' || true)
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        status=1
        echo "!! $t: exit $rc, $crashes new artifact(s) in $here/artifacts/$t; see $log"
        grep -E 'ERROR: libFuzzer|panicked at|SUMMARY|Test unit written' "$log" | head -5 || true
    fi
    line="$t: executions ${execs:-?}, wall ${secs} s, ${eps:-?} exec/s, cov ${cov:-?} ft ${ft:-?}, peak RSS ${rss:-?} MB, slowest input ${slowest:-?} s, crashes/timeouts/OOMs $crashes, slow units (over 10 s, not failures) $slow, exit $rc, sanitizer $sanitizer"
    [ "$contained" -eq 0 ] || line="$line; contained panics $contained (${places})"
    echo "$line"
    summary+=("$line")
    if [ "$cmin" -eq 1 ] && [ "$rc" -eq 0 ]; then
        # The seeds go in first, so that only what adds to them is kept; then they are taken out
        # again (they are replayed from seeds/ anyway).
        merged="$here/target/merged/$t"
        rm -rf "$merged"
        mkdir -p "$merged"
        cp "$here/seeds/$t"/* "$merged"/
        # -use_counters=0: covering each edge, not each hit-count bucket of each edge, keeps the
        # committed corpus small (photo: 491 inputs, 0.4 MB, instead of 1,448, 7 MB).
        "$bin_dir/$t" "${common[@]}" -use_counters=0 -set_cover_merge=1 "$merged" "$here/corpus/$t" "$work" \
            >"$here/target/logs/$t.cmin.log" 2>&1
        for f in "$here/seeds/$t"/*; do rm -f "$merged/$(basename "$f")"; done
        rm -rf "$here/corpus/$t"
        mv "$merged" "$here/corpus/$t"
        files=$(ls "$here/corpus/$t" | wc -l)
        bytes=$(cat "$here/corpus/$t"/* | wc -c)
        line="$t: corpus after cmin: $files files, $bytes bytes"
        echo "$line"
        summary+=("$line")
    fi
done

echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
exit "$status"
