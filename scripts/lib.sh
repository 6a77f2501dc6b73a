# shellcheck shell=bash
# Shared helpers for scripts/run and scripts/test. Source it, don't execute it:
#
#   source scripts/lib.sh
#   rv_bootstrap_python   # .venv + requirements.txt (only when it changed)
#   rv_start_services     # PostgreSQL + Redis; exports DATABASE_URL and REDIS_URL
#
# Safe under `set -euo pipefail`; the two public functions turn those options on for their
# own body, so a failure exits the calling shell with a message. Progress goes to stderr,
# prefixed "[rapidvalue]"; nothing else is printed.
# Tunables: RV_PYTHON (interpreter used to create .venv, default python3),
#           RV_FAST_PG=1 (fsync/synchronous_commit/full_page_writes off; for tests only).

RV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RV_VENV="$RV_ROOT/.venv"
RV_DB_NAME=rapidvalue
RV_DB_USER=rapidvalue
RV_DB_PASSWORD=rapidvalue
RV_REDIS_PORT=6379
_RV_APT_UPDATED=0

rv_log() { printf '[rapidvalue] %s\n' "$*" >&2; }
rv_die() { printf '[rapidvalue] ERROR: %s\n' "$*" >&2; return 1; }

# Run a command as root (directly, or through sudo when we are not root).
_rv_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        rv_die "need root (or sudo) to run: $*"
    fi
}

# Run a command as the postgres OS user, from a directory it can read.
_rv_as_postgres() {
    if [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "$@")
    elif [ "$(id -u)" -eq 0 ]; then
        (cd / && su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
    else
        (cd / && sudo -u postgres "$@")
    fi
}

# apt-get install, running `apt-get update` once first (per shell).
_rv_apt_install() {
    command -v apt-get >/dev/null 2>&1 || rv_die "apt-get not found; install $* yourself or set DATABASE_URL/REDIS_URL"
    if [ "$_RV_APT_UPDATED" -eq 0 ]; then
        rv_log "apt-get update"
        _rv_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        _RV_APT_UPDATED=1
    fi
    rv_log "apt-get install $*"
    # C.UTF-8 always exists on Debian: the cluster the package creates gets a UTF8 encoding.
    _rv_root env DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_rv_sha256() { sha256sum "$1" | cut -d' ' -f1; }

# --------------------------------------------------------------------------- Python

rv_bootstrap_python() {
    local -  # shell options below are local to this function
    set -euo pipefail
    local py="${RV_PYTHON:-python3}" req="$RV_ROOT/requirements.txt" stamp="$RV_VENV/.requirements.sha256"
    local want have=""
    [ -f "$req" ] || rv_die "missing $req"

    if [ ! -x "$RV_VENV/bin/python" ] || ! "$RV_VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        command -v "$py" >/dev/null 2>&1 || rv_die "$py not found (Python 3.11+ required)"
        "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || rv_die "$py is $("$py" -V 2>&1); Python 3.11+ required"
        rv_log "creating .venv with $("$py" -V 2>&1)"
        rm -rf "$RV_VENV"
        "$py" -m venv "$RV_VENV"
    fi

    want="$(_rv_sha256 "$req")"
    [ -f "$stamp" ] && have="$(cat "$stamp")"
    if [ "$want" != "$have" ]; then
        rv_log "installing requirements.txt into .venv (quiet; takes a minute the first time)"
        "$RV_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
        printf '%s\n' "$want" >"$stamp"
    else
        rv_log "python packages up to date (.venv)"
    fi
}

# --------------------------------------------------------------------------- PostgreSQL

# Prints "<version> <port> <status>" of the cluster to use (prefers a cluster named
# "main", highest version), or nothing when there is no cluster.
_rv_pg_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 0
    { pg_lsclusters --no-header 2>/dev/null || true; } \
        | awk '{ print ($2 == "main" ? 1 : 0), $1, $2, $3, $4 }' \
        | sort -k1,1nr -k2,2Vr | head -n1 | awk 'NF { print $2, $3, $4, $5 }'
}

_rv_psql_admin() {
    # psql as the postgres superuser over the local socket; extra args passed through.
    _rv_as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$_RV_PG_PORT" "$@"
}

_rv_ensure_postgres() {
    local cluster version name port status i
    # Fast path: binaries present -> no apt at all. (A missing cluster alone needs no apt:
    # pg_createcluster below handles it when the server binaries are installed.)
    if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1 \
        || ! command -v pg_isready >/dev/null 2>&1 \
        || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        _rv_apt_install postgresql
    fi
    cluster="$(_rv_pg_cluster)"
    if [ -z "$cluster" ]; then
        version="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null \
            | awk -F/ '{ print $5 }' | sort -V | tail -n1)"
        [ -n "$version" ] || rv_die "PostgreSQL server binaries not found under /usr/lib/postgresql"
        rv_log "creating PostgreSQL $version cluster 'main'"
        _rv_root pg_createcluster --locale C.UTF-8 "$version" main >/dev/null
        cluster="$(_rv_pg_cluster)"
        [ -n "$cluster" ] || rv_die "pg_createcluster $version main did not create a cluster"
    fi
    read -r version name port status <<<"$cluster"
    _RV_PG_PORT="$port"

    if [ "${status%%,*}" != "online" ]; then
        rv_log "starting PostgreSQL $version/$name on port $port"
        _rv_root pg_ctlcluster "$version" "$name" start \
            || rv_die "pg_ctlcluster $version $name start failed; see /var/log/postgresql/postgresql-$version-$name.log"
    fi
    for i in $(seq 1 60); do
        pg_isready -q -h 127.0.0.1 -p "$port" && break
        [ "$i" -eq 60 ] && rv_die "PostgreSQL on 127.0.0.1:$port not ready after 30s"
        sleep 0.5
    done

    # Role and database (idempotent). The password is (re)set each time: cheap and self-healing.
    _rv_psql_admin -d postgres <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$RV_DB_USER') THEN
        CREATE ROLE $RV_DB_USER LOGIN CREATEDB PASSWORD '$RV_DB_PASSWORD';
    ELSE
        ALTER ROLE $RV_DB_USER LOGIN CREATEDB PASSWORD '$RV_DB_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $RV_DB_NAME OWNER $RV_DB_USER ENCODING ''UTF8'' TEMPLATE template0'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$RV_DB_NAME')
\gexec
SQL

    # Password auth over TCP on 127.0.0.1 (Debian's pg_hba allows scram-sha-256 there; verify).
    if ! PGPASSWORD="$RV_DB_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$port" \
        -U "$RV_DB_USER" -d "$RV_DB_NAME" -tAc 'select 1' >/dev/null 2>&1; then
        local hba
        hba="$(_rv_psql_admin -d postgres -tAc 'show hba_file')"
        rv_log "password login over 127.0.0.1 refused; adding a scram-sha-256 rule to $hba"
        _rv_root sed -i "1i host all $RV_DB_USER 127.0.0.1/32 scram-sha-256  # added by RapidValue scripts/lib.sh" "$hba"
        _rv_psql_admin -d postgres -tAc 'select pg_reload_conf()' >/dev/null
        sleep 0.5
        PGPASSWORD="$RV_DB_PASSWORD" PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "$port" \
            -U "$RV_DB_USER" -d "$RV_DB_NAME" -tAc 'select 1' >/dev/null \
            || rv_die "cannot log in as $RV_DB_USER on 127.0.0.1:$port (check $hba and listen_addresses)"
    fi

    if [ "${RV_FAST_PG:-0}" = "1" ]; then
        local current
        current="$(_rv_psql_admin -d postgres -tAc \
            "select string_agg(setting, ',' order by name) from pg_settings
             where name in ('fsync', 'full_page_writes', 'synchronous_commit')")"
        if [ "$current" != "off,off,off" ]; then
            rv_log "RV_FAST_PG=1: turning off fsync, synchronous_commit, full_page_writes (test speed; not crash-safe)"
            _rv_psql_admin -d postgres >/dev/null <<'SQL'
ALTER SYSTEM SET fsync = off;
ALTER SYSTEM SET synchronous_commit = off;
ALTER SYSTEM SET full_page_writes = off;
SELECT pg_reload_conf();
SQL
        fi
    fi

    export DATABASE_URL="postgres://$RV_DB_USER:$RV_DB_PASSWORD@127.0.0.1:$port/$RV_DB_NAME"
    rv_log "PostgreSQL $version ready: $DATABASE_URL"
}

# --------------------------------------------------------------------------- Redis

_rv_redis_ping() {
    [ "$(redis-cli -h 127.0.0.1 -p "$RV_REDIS_PORT" ping 2>/dev/null)" = "PONG" ]
}

_rv_ensure_redis() {
    local i
    if ! command -v redis-server >/dev/null 2>&1; then
        _rv_apt_install redis-server
    elif ! command -v redis-cli >/dev/null 2>&1; then
        _rv_apt_install redis-tools
    fi
    if ! _rv_redis_ping; then
        rv_log "starting redis-server on 127.0.0.1:$RV_REDIS_PORT (log: /tmp/rapidvalue-redis.log)"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$RV_REDIS_PORT" --save '' --appendonly no \
            --dir /tmp --logfile /tmp/rapidvalue-redis.log --pidfile /tmp/rapidvalue-redis.pid >/dev/null
        for i in $(seq 1 40); do
            _rv_redis_ping && break
            [ "$i" -eq 40 ] && rv_die "redis-server did not answer PING after 10s; see /tmp/rapidvalue-redis.log"
            sleep 0.25
        done
    fi
    export REDIS_URL="redis://127.0.0.1:$RV_REDIS_PORT/0"
    rv_log "Redis ready: $REDIS_URL"
}

# --------------------------------------------------------------------------- entry point

rv_start_services() {
    local -
    set -euo pipefail
    # A variable that is already set wins: that service is used as it is (nothing started or changed).
    if [ -n "${DATABASE_URL:-}" ] && [ -n "${REDIS_URL:-}" ]; then
        rv_log "using DATABASE_URL and REDIS_URL from the environment (no local services started)"
        return 0
    fi
    if [ -n "${DATABASE_URL:-}" ]; then
        rv_log "using DATABASE_URL from the environment"
    else
        _rv_ensure_postgres
    fi
    if [ -n "${REDIS_URL:-}" ]; then
        rv_log "using REDIS_URL from the environment"
    else
        _rv_ensure_redis
    fi
}

# Test peers that the suite runs for real: OpenLDAP's slapd for the LDAP connector.
# The package must not configure or start a system slapd: the tests start their own.
rv_install_test_peers() {
    if ! command -v slapd >/dev/null 2>&1 && [ ! -x /usr/sbin/slapd ]; then
        printf 'slapd slapd/no_configuration boolean true\n' | _rv_root debconf-set-selections
        _rv_apt_install slapd ldap-utils
    fi
    # The consoles are tested in a real browser: Debian's Chromium (Playwright drives it; its own
    # browser download is not reachable from CI).
    if [ ! -x /usr/bin/chromium ]; then
        _rv_apt_install chromium fonts-dejavu-core
    fi
}
