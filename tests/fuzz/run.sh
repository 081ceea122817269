#!/usr/bin/env bash
# Runs every fuzz target (built by tests/fuzz/build.sh) for a bounded time,
# each on a copy of its seed corpus, and fails on any crash, sanitizer
# report, timeout, leak or out-of-memory.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]     default: 60 s, all targets
#
# Environment: APIKEY_FUZZ_BUILD (default build/fuzz), APIKEY_FUZZ_JOBS
# (targets run at once, default: the number of CPUs).
# Per target, build/fuzz/run/<target>/ keeps the log, the grown corpus and
# any crash input (artifacts/); the repository's corpus is never written.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${APIKEY_FUZZ_BUILD:-$repo/build/fuzz}
seconds=${1:-60}
shift || true
case $seconds in
    ''|*[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
jobs=${APIKEY_FUZZ_JOBS:-$(nproc)}

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(key_format api_params sanitize_text
                                     spool_file usage_stream key_table_attach
                                     config_text runtime_dir http_head agg_read)

# Largest input per target: a spool frame is 12 + 288 * n bytes, a key
# table 4096 + 256 * capacity (capacity 32 fits).
max_len() {
    case $1 in
        key_format) echo 256 ;;
        spool_file) echo 8192 ;;
        key_table_attach) echo 16384 ;;
        runtime_dir) echo 16 ;;
        http_head) echo 10240 ;;
        agg_read) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

# Sanitizer reports abort (so libFuzzer saves the input); keep stacks.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

run_one() {
    local t=$1 dir=$bin/run/$1
    rm -rf "$dir"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    cp -r "$repo/tests/fuzz/corpus/$t/." "$dir/corpus/"
    "$bin/fuzz_$t" "$dir/corpus" \
        -max_total_time="$seconds" -timeout=5 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" -print_final_stats=1 \
        -artifact_prefix="$dir/artifacts/" >"$dir/log" 2>&1
    echo $? >"$dir/rc"
}

for t in "${targets[@]}"; do
    if [ ! -x "$bin/fuzz_$t" ]; then
        echo "no $bin/fuzz_$t: run tests/fuzz/build.sh first" >&2
        exit 2
    fi
    [ -d "$repo/tests/fuzz/corpus/$t" ] || { echo "no corpus for $t" >&2; exit 2; }
done

echo "==> fuzzing ${#targets[@]} targets for ${seconds}s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
done
wait

status=0
for t in "${targets[@]}"; do
    dir=$bin/run/$t
    rc=$(cat "$dir/rc" 2>/dev/null || echo 1)
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -n 1)
    corpus=$(find "$dir/corpus" -type f | wc -l)
    crashes=$(find "$dir/artifacts" -type f | wc -l)
    if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        [ "$crashes" -eq 0 ] && crashes=1  # died without saving an input
        status=1
        printf '%-18s %10s runs  %d crashes (exit %s)  corpus %d\n' \
            "$t" "${runs:-?}" "$crashes" "$rc" "$corpus"
        grep -E -m 20 'ERROR|SUMMARY|runtime error|check failed|Test unit written' \
            "$dir/log" | sed 's/^/    /'
        echo "    full log: $dir/log"
        for a in "$dir"/artifacts/*; do
            [ -f "$a" ] && echo "    input: $a ($(wc -c <"$a") bytes)"
        done
    else
        printf '%-18s %10s runs  0 crashes  corpus %d\n' "$t" "${runs:-?}" "$corpus"
    fi
done

if [ $status -ne 0 ]; then
    echo "==> fuzzing FAILED (reproduce: build/fuzz/fuzz_<target> <input>)"
else
    echo "==> fuzzing: no crashes"
fi
exit $status
