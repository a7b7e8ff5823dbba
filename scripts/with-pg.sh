#!/usr/bin/env bash
# Run a command against a PostgreSQL server.  With PGTX_TEST_DSN set, that
# server is used as is; otherwise pg_virtualenv creates a throw-away cluster
# (it works as root too), exports PGHOST/PGPORT/PGUSER/... for libpq, runs the
# command and drops the cluster.  pg_virtualenv turns fsync off, which
# tests do not need; benchmarks that quote figures run on the embedded
# cluster instead, where durability is on.
set -euo pipefail
if [ -n "${PGTX_TEST_DSN:-}" ]; then
  exec "$@"
fi
# -t keeps the cluster in a temporary folder even as root, so that two runs
# (or a run killed half-way) never collide on /etc/postgresql/*/regress.
exec pg_virtualenv -t -o max_connections=200 "$@"
