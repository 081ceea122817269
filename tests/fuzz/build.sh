#!/usr/bin/env bash
# Builds the libFuzzer targets under ASan + UBSan into build/fuzz/.
#
#   tests/fuzz/build.sh              all targets
#   tests/fuzz/build.sh key_format   only fuzz_key_format
#
# Each target links the few pure source files it exercises directly (no
# libpq, no httplib, no nlohmann), so the build needs only clang 14, its
# runtime (libclang-rt-14-dev, which ships libFuzzer) and OpenSSL.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${APIKEY_FUZZ_BUILD:-$repo/build/fuzz}
cxx=${CXX_FUZZ:-clang++-14}
mkdir -p "$out"

# -fno-sanitize-recover: any UBSan finding aborts, so libFuzzer records it
# as a crash instead of printing a line and going on.
flags=(-std=c++17 -g -O1 -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -Wall -Wextra -Wno-unused-parameter
       -I"$repo/shared" -I"$repo/tools/apikeyd")

s=$repo/shared
d=$repo/tools/apikeyd
declare -A sources=(
    [key_format]="$s/key_format.cpp $s/key_hash.cpp"
    [api_params]="$d/api_params.cpp $d/api_auth.cpp $d/rollup.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/key_table.cpp $s/segment_file.cpp $s/runtime_dir.cpp $s/key_format.cpp $s/key_hash.cpp $s/scope.cpp $s/uuid.cpp"
    [sanitize_text]="$d/rollup.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/uuid.cpp"
    [spool_file]="$d/spool.cpp $d/spool_frame.cpp $d/rollup.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/uuid.cpp $s/key_format.cpp"
    [usage_stream]="$s/usage_ring.cpp $s/usage_stream.cpp $s/usage_agg.cpp $s/usage_ipset.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/segment_file.cpp $s/runtime_dir.cpp"
    [key_table_attach]="$s/key_table.cpp $s/segment_file.cpp $s/runtime_dir.cpp $s/key_hash.cpp $s/uuid.cpp"
    [runtime_dir]="$s/segment_file.cpp $s/runtime_dir.cpp"
    [http_head]="$d/http_head.cpp"
    [config_text]="$d/config.cpp $d/daemon_options.cpp $d/rollup.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/uuid.cpp"
    [agg_read]="$s/usage_agg.cpp $s/usage_ipset.cpp $s/usage_ring.cpp $s/usage_stream.cpp $s/usage_buckets.cpp $s/usage_record.cpp $s/segment_file.cpp $s/runtime_dir.cpp"
)
libs=(-lcrypto)

targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(key_format api_params sanitize_text
                                     spool_file usage_stream key_table_attach
                                     config_text runtime_dir http_head agg_read)

pids=()
for t in "${targets[@]}"; do
    [ -n "${sources[$t]:-}" ] || { echo "unknown fuzz target: $t" >&2; exit 2; }
    echo "==> building fuzz_$t"
    # shellcheck disable=SC2086  # the source lists are word lists
    "$cxx" "${flags[@]}" "$repo/tests/fuzz/fuzz_$t.cpp" ${sources[$t]} \
        "${libs[@]}" -o "$out/fuzz_$t" &
    pids+=($!)
    # Two compilers at a time: these machines have two cores.
    if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
echo "==> fuzz targets in $out"
