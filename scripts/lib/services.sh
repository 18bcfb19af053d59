# Shared by scripts/test and scripts/bench: install (when absent) and start
# the services tests and benchmarks talk to, on free loopback ports.
# Source it from the repository root; it sets a cleanup trap.

MOTO_VERSION=5.2.5
FAUXQS_VERSION=1.9.2 # runs on Node.js 20 (2.x needs 22.5+)
PLAYWRIGHT_VERSION=1.65.2
VENV=.venv
PY="${PYTHON_BIN:-python3}"
SERVICE_PIDS=()

log() { printf '[%s] %s\n' "$(basename "$0")" "$*" >&2; }

apt_install() {
    command -v apt-get >/dev/null 2>&1 || { log "please install: $*"; exit 1; }
    log "installing $* from Debian packages"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

stop_services() {
    for pid in "${SERVICE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_services EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_port() { # name port pid
    for _ in $(seq 1 150); do
        if "$PY" -c "import socket; socket.create_connection(('127.0.0.1', $2), 0.2)" 2>/dev/null; then return 0; fi
        kill -0 "$3" 2>/dev/null || { log "$1 exited during start-up"; exit 1; }
        sleep 0.1
    done
    log "$1 did not open port $2"
    exit 1
}

ensure_python() {
    command -v "$PY" >/dev/null 2>&1 || apt_install python3
    "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
}

ensure_bwrap() {
    command -v bwrap >/dev/null 2>&1 || apt_install bubblewrap
}

ensure_attack_tools() {
    # The attack suite builds a real shared object; setpriv drops instances' root.
    command -v gcc >/dev/null 2>&1 || apt_install gcc libc6-dev
    command -v setpriv >/dev/null 2>&1 || apt_install util-linux
}

ensure_node() {
    # npm too: build.rs bundles the web console (console/) with it.
    command -v node >/dev/null 2>&1 || apt_install nodejs
    command -v npm >/dev/null 2>&1 || apt_install npm
}

# The console's browser test: Debian's Chromium, driven by Playwright from
# PyPI (its own browsers are never downloaded; it is pointed at Chromium).
ensure_browser() {
    command -v chromium >/dev/null 2>&1 || apt_install chromium
    export INFRA_TEST_CHROMIUM
    INFRA_TEST_CHROMIUM="$(command -v chromium)"
    if ! "$VENV/bin/python" -c "import playwright, sys; from importlib.metadata import version; sys.exit(version('playwright') != '$PLAYWRIGHT_VERSION')" 2>/dev/null; then
        log "installing playwright==$PLAYWRIGHT_VERSION into $VENV"
        [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
    fi
    export INFRA_TEST_BROWSER_PYTHON="$PWD/$VENV/bin/python"
}

ensure_redis() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    export INFRA_TEST_REDIS_SERVER
    INFRA_TEST_REDIS_SERVER="$(command -v redis-server)"
}

start_moto() {
    if ! "$VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
        log "installing moto[server]==$MOTO_VERSION into $VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
    fi
    local port
    port=$(free_port)
    "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
    SERVICE_PIDS+=($!)
    wait_port moto "$port" $!
    export INFRA_TEST_AWS_ENDPOINT="http://127.0.0.1:$port"
    log "moto $MOTO_VERSION on $INFRA_TEST_AWS_ENDPOINT"
}

start_fauxqs() {
    command -v npm >/dev/null 2>&1 || apt_install nodejs npm
    if [ ! -f .bench/node_modules/fauxqs/package.json ] \
        || ! grep -q "\"version\": \"$FAUXQS_VERSION\"" .bench/node_modules/fauxqs/package.json; then
        log "installing fauxqs@$FAUXQS_VERSION into .bench"
        npm install --silent --no-audit --no-fund --prefix .bench "fauxqs@$FAUXQS_VERSION"
    fi
    local port
    port=$(free_port)
    FAUXQS_PORT=$port FAUXQS_APP="$PWD/.bench/node_modules/fauxqs/dist/app.js" \
        node scripts/lib/fauxqs-loopback.mjs >/dev/null 2>&1 &
    SERVICE_PIDS+=($!)
    wait_port fauxqs "$port" $!
    export BENCH_FAST_SQS_ENDPOINT="http://127.0.0.1:$port"
    log "fauxqs $FAUXQS_VERSION (SQS) on $BENCH_FAST_SQS_ENDPOINT"
}
