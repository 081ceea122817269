# tools/test --coverage: gcov counters of an instrumented build, reset before
# the tests and summed up by gcovr after them.
# shellcheck shell=bash

# The gate: total line coverage below this (whole percent) fails. A ratchet:
# raise it to the new figure rounded down, less one point, whenever tests
# push it up; the point is headroom for lines that run or not with timing,
# and for parts of tests that only run as root or with unshare.
APIKEY_COVERAGE_MIN=96
# Where the project wants to be: the total, and every directory.
APIKEY_COVERAGE_GOAL=95
APIKEY_COVERAGE_DIR_GOAL=90
# What is measured; tests/, tools/bench and generated sources are not.
APIKEY_COVERAGE_DIRS=(module shared tools/apikeyd tools/apikeyctl tools/common)

# Empty counters, writable by everyone: nginx's workers run as nobody when
# the suite runs as root and could not create or update root's .gcda files
# next to the module's objects. libgcov updates an existing file in place,
# so the mode survives every process that writes it.
coverage_reset() {
    local build=$1 gcno
    find "$build" -name '*.gcda' -delete
    while IFS= read -r -d '' gcno; do
        (umask 0 && : >"${gcno%.gcno}.gcda")
    done < <(find "$build" -name '*.gcno' -print0)
    coverage_check_writable "$build"
}

# Fails early when a worker could not reach the module's counters (a
# directory above the build that nobody may traverse).
coverage_check_writable() {
    local gcda
    [ "$(id -u)" -eq 0 ] || return 0
    gcda=$(find "$1/nginx-module/objs" -name '*.gcda' -print -quit)
    if [ -z "$gcda" ]; then
        echo "coverage: no .gcda under $1/nginx-module/objs" \
             "(module built without --coverage?)" >&2
        return 1
    fi
    if ! runuser -u nobody -- test -w "$gcda"; then
        echo "coverage: nginx's workers (nobody) cannot write $gcda:" \
             "every directory above it must be world-traversable" >&2
        return 1
    fi
}

# gcovr over the counters; prints the figures per directory and fails under
# APIKEY_COVERAGE_MIN unless SUBSET (only some .t files ran) is 1.
coverage_report() {
    local build=$1 subset=$2 out=$1/coverage d filters=()
    # Objects no process ran keep the empty file reset left: gcov would
    # read it as a corrupt data file.
    find "$build" -name '*.gcda' -empty -delete
    rm -rf "$out"
    mkdir -p "$out"
    for d in "${APIKEY_COVERAGE_DIRS[@]}"; do
        filters+=(--filter "$APIKEY_REPO/$d/")
    done
    # One job: gcovr -j hung on a gcov parse error.
    gcovr -j 1 --root "$APIKEY_REPO" "${filters[@]}" \
        --json-summary "$out/summary.json" --txt "$out/coverage.txt" \
        --html-details "$out/index.html" "$build" >"$out/gcovr.log" 2>&1 || {
        cat "$out/gcovr.log" >&2
        return 1
    }
    perl "$APIKEY_REPO/tools/lib/coverage-summary.pl" "$out/summary.json" \
        "$APIKEY_COVERAGE_MIN" "$APIKEY_COVERAGE_GOAL" \
        "$APIKEY_COVERAGE_DIR_GOAL" "$subset" "${APIKEY_COVERAGE_DIRS[@]}"
    local rc=$?
    echo "    per file, with the lines never run: $out/coverage.txt" \
         "(and $out/index.html)"
    return $rc
}
