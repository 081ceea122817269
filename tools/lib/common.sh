# Shared by tools/test and tools/demo: install what is missing, build.
# shellcheck shell=bash

APIKEY_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
APIKEY_BUILD=${APIKEY_BUILD:-$APIKEY_REPO/build}

# Debian packages the build, the tests and the demo need.
APIKEY_PACKAGES=(
    build-essential cmake g++ pkg-config
    nginx nginx-dev
    postgresql-15 postgresql-client-15 libpq-dev
    libssl-dev nlohmann-json3-dev libcpp-httplib-dev
    libgtest-dev libbenchmark-dev
    perl curl procps wrk openssl
    chromium
)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# Installs the packages that are not installed yet (and only those).
ensure_packages() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null \
                | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> installing ${missing[*]}"
    as_root apt-get update -qq
    # The nginx package's own service is not used: the tests and the demo
    # start private nginx instances.
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        >/dev/null
}

# t/031-dashboard-browser.t: Node.js and playwright-core from the npm
# registry, pinned in tools/browser-test/package-lock.json. A machine may have
# NodeSource's nodejs (which bundles npm and conflicts with Debian's npm
# package): install Debian's only for what is missing.
ensure_browser_test() {
    command -v node >/dev/null 2>&1 || ensure_packages nodejs || return 1
    command -v npm >/dev/null 2>&1 || ensure_packages npm || return 1
    local dir=$APIKEY_REPO/tools/browser-test
    if [ ! -f "$dir/node_modules/.package-lock.json" ] \
            || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
        echo "==> npm ci in tools/browser-test (playwright-core)"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || return 1
    fi
}

# Arguments go to cmake's configure step (e.g. -DAPIKEY_COVERAGE=ON).
build_all() {
    echo "==> building in $APIKEY_BUILD"
    cmake -S "$APIKEY_REPO" -B "$APIKEY_BUILD" \
        -DCMAKE_BUILD_TYPE="${APIKEY_BUILD_TYPE:-RelWithDebInfo}" "$@" >/dev/null
    cmake --build "$APIKEY_BUILD" -j"$(nproc)"
}

# PostgreSQL refuses to run as root: run its tools as `postgres` then.
pg_bindir() {
    if command -v pg_config >/dev/null 2>&1 \
            && [ -x "$(pg_config --bindir)/initdb" ]; then
        pg_config --bindir
    else
        echo /usr/lib/postgresql/15/bin
    fi
}

as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}
