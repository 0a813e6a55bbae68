#!/usr/bin/env bash
# The local demo cluster: etcd + 3 namespaced systemd hosts running fleetd, with the
# example units of this folder started. Run as root on Debian 12.
#   bash examples/cluster.sh up       set up (installs what is missing) and bring it up
#   bash examples/cluster.sh status   show machines and units
#   bash examples/cluster.sh down     remove everything
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-up}"
if [ "$cmd" = up ]; then
  bash .ci/setup
fi
[ -x .venv/bin/python ] || { echo "run 'bash examples/cluster.sh up' first" >&2; exit 1; }
shift || true
exec .venv/bin/python -m fleetlab.demo "$cmd" "$@"
