# A real PostgreSQL server for the store tests, from Debian's packages.
#
# Sourced by .ci/run (set -euo pipefail, as root, no stdin). Installs postgresql if missing,
# creates and starts a dedicated cluster "cllmtest" listening on 127.0.0.1 only, creates a
# role and a database, and exports CLLM_TEST_POSTGRES_URL. Idempotent: a second run only
# makes sure the cluster is up. A CLLM_TEST_POSTGRES_URL already set is left alone.
# By hand:  source .ci/postgres.sh && python -m pytest -q tests/test_store*.py

_cllm_postgres() {
    local port=${CLLM_PG_PORT:-55432} cluster=cllmtest user=cllm password=cllm db=cllm_test
    local version
    if [ -n "${CLLM_TEST_POSTGRES_URL:-}" ]; then
        echo "postgres.sh: using CLLM_TEST_POSTGRES_URL from the environment"
        return 0
    fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        echo "postgres.sh: installing PostgreSQL from Debian's packages"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)

    if [ ! -d "/etc/postgresql/$version/$cluster" ]; then
        # --start-conf manual: only this script starts it; trust over the local socket (for
        # the setup below), passwords over TCP.
        pg_createcluster "$version" "$cluster" --port "$port" --start-conf manual \
            -- --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        cat >"/etc/postgresql/$version/$cluster/conf.d/cllm-tests.conf" <<EOF
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
EOF
    fi
    if ! pg_ctlcluster "$version" "$cluster" status >/dev/null 2>&1; then
        pg_ctlcluster "$version" "$cluster" start
    fi

    _cllm_psql() { runuser -u postgres -- psql -p "$port" -X -q -v ON_ERROR_STOP=1 "$@"; }
    if [ "$(_cllm_psql -tAc "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != 1 ]; then
        _cllm_psql -c "CREATE ROLE $user LOGIN PASSWORD '$password'"
    fi
    if [ "$(_cllm_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]; then
        _cllm_psql -c "CREATE DATABASE $db OWNER $user"
    fi
    unset -f _cllm_psql

    export CLLM_TEST_POSTGRES_URL="postgresql+psycopg://$user:$password@127.0.0.1:$port/$db"
    echo "postgres.sh: PostgreSQL $version cluster $cluster up on 127.0.0.1:$port"
}
_cllm_postgres
unset -f _cllm_postgres
