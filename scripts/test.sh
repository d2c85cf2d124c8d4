#!/usr/bin/env bash
# Install the test dependencies and the container engines, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args]
#   CONSIST_SKIP_ENGINES=1  do not install or start Docker, Podman, Apptainer and the registry
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
"$VENV/bin/python" -m pip install -q -e '.[test]'
if [ "${CONSIST_SKIP_ENGINES:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    # Real engines for the container tests: dockerd, podman, apptainer and a loopback registry.
    bash scripts/setup-containers.sh all
    export CONSIST_REQUIRE_ENGINES=1 # a missing engine fails the suite instead of skipping tests
    # xfsprogs: the reflink test builds a small XFS file system on a loop device.
    if ! command -v mkfs.xfs >/dev/null; then
      apt-get install -y -q --no-install-recommends xfsprogs >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends xfsprogs >/dev/null 2>&1; } \
        || echo "[consist] could not install xfsprogs: the reflink test will skip" >&2
    fi
  else
    echo "[consist] not root: container engines are not installed; their tests skip if absent" >&2
  fi
fi
"$VENV/bin/python" -m ruff check src tests benchmarks examples
exec "$VENV/bin/python" -m pytest "$@"
