#!/usr/bin/env bash
# The PostgreSQL tests start their own server (initdb as an unprivileged user, loopback only).
# They need Debian's server binaries; install them when missing and we may (root, apt).
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  echo "installing PostgreSQL (Debian's postgresql package) for the storage tests"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  # the package starts a cluster of its own; the tests use their own, so stop it
  if command -v pg_ctlcluster >/dev/null; then
    for cluster in /etc/postgresql/*/main; do
      [ -d "$cluster" ] && pg_ctlcluster "$(basename "$(dirname "$cluster")")" main stop || true
    done
  fi
  exit 0
fi
echo "PostgreSQL server binaries not found: install Debian's postgresql package" >&2
exit 1
