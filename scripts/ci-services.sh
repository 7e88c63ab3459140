#!/usr/bin/env bash
# Services the test suite needs: a PostgreSQL server for the store tests and Debian's
# Chromium for the browser test. `.ci/run` sources this file (as root); by hand:
#   source scripts/ci-services.sh
# Idempotent: installs only what is missing, starts PostgreSQL only if it is down, creates
# the role and database only once. Exports SURELABEL_TEST_PG_URL for the tests.

_surelabel_services() {
  local need=() ver cluster
  if [ "$(id -u)" != 0 ]; then
    echo "ci-services: not root; skipping installs (PostgreSQL/Chromium tests may skip)" >&2
    return 0
  fi
  command -v pg_ctlcluster >/dev/null 2>&1 || need+=(postgresql)
  [ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
  if [ "${#need[@]}" -gt 0 ]; then
    echo "ci-services: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi

  # The newest installed PostgreSQL; create its cluster if the package did not.
  ver=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  cluster=main
  if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$ver $cluster"; then
    pg_createcluster "$ver" "$cluster" >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $4}' \
      | grep -q online; then
    pg_ctlcluster "$ver" "$cluster" start
  fi
  local port
  port=$(pg_lsclusters -h | awk -v v="$ver" -v c="$cluster" '$1==v && $2==c {print $3}')
  runuser -u postgres -- psql -p "$port" -qtAc \
    "SELECT 1 FROM pg_roles WHERE rolname='surelabel'" | grep -q 1 \
    || runuser -u postgres -- psql -p "$port" -qc \
      "CREATE ROLE surelabel LOGIN PASSWORD 'surelabel'"
  runuser -u postgres -- psql -p "$port" -qtAc \
    "SELECT 1 FROM pg_database WHERE datname='surelabel_test'" | grep -q 1 \
    || runuser -u postgres -- createdb -p "$port" -O surelabel surelabel_test
  export SURELABEL_TEST_PG_URL="postgresql+psycopg://surelabel:surelabel@127.0.0.1:${port}/surelabel_test"
  echo "ci-services: PostgreSQL $ver on port $port; chromium: $(/usr/bin/chromium --version 2>/dev/null || echo missing)" >&2
}

_surelabel_services
unset -f _surelabel_services
