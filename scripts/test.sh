#!/usr/bin/env bash
# Install the test dependencies and the container engines, then run the whole suite.
# Usage: bash scripts/test.sh [pytest args]
#   CONSIST_SKIP_ENGINES=1  do not install or start Docker, Podman, Apptainer and the registry
#                           (their tests then skip, and the run says so at the end)
#   CONSIST_SKIP_CLUSTER=1  do not install or start PostgreSQL and Slurm (scripts/setup-scaleout.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh

# Debian packages the tests use directly: git (code identity), xfsprogs and e2fsprogs (the
# reflink test builds an XFS image and reads extents with filefrag), curl (registry checks),
# chromium (the web view is tested in a real headless browser, driven by Playwright).
SYSTEM_PACKAGES=(git xfsprogs e2fsprogs curl chromium)
missing=()
for p in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "[consist] installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "[consist] missing Debian packages ${missing[*]} (apt-get install them as root): tests that need them fail" >&2
  fi
fi

# Exact versions of every Python dependency and dev tool (constraints.txt).
# The test extra includes the cluster extra (psycopg, dask, distributed, dask-jobqueue).
"$VENV/bin/python" -m pip install -q -c constraints.txt -e '.[test]'
# The web view's front-end libraries, from the npm registry, checked against their integrity.
"$VENV/bin/python" scripts/vendor-ui.py

required=()
if [ "${CONSIST_SKIP_ENGINES:-0}" != 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    # Real engines for the container tests: dockerd, podman, apptainer and a loopback registry.
    bash scripts/setup-containers.sh all
    required+=(docker podman apptainer)
  else
    echo "[consist] not root: container engines are not installed; their tests skip if absent" >&2
  fi
fi
if [ "${CONSIST_SKIP_CLUSTER:-0}" != 1 ]; then
  scaleout_env=${CONSIST_SCALEOUT_DIR:-/tmp/ci-scaleout}/scaleout.env
  if [ "$(id -u)" = 0 ]; then
    # A private PostgreSQL 15 and a one-node Slurm (munge, slurmctld, slurmd) on 127.0.0.1.
    # Idempotent, about a second when they are up; its log is shown only when it fails.
    scaleout_log=$(mktemp)
    if ! bash scripts/setup-scaleout.sh setup >"$scaleout_log" 2>&1; then
      cat "$scaleout_log" >&2; rm -f "$scaleout_log"; exit 1
    fi
    rm -f "$scaleout_log"
    required+=(postgres slurm)
  else
    echo "[consist] not root: PostgreSQL and Slurm are not started; their tests use them only if already up" >&2
  fi
  # CONSIST_TEST_PG_URL, CONSIST_TEST_SLURM_PARTITION, ... for the tests (tests/scaleout.py)
  if [ -s "$scaleout_env" ]; then set -a; . "$scaleout_env"; set +a; fi
fi
if [ "$(id -u)" = 0 ]; then required+=(chromium); fi
pytest_opts=()
if [ ${#required[@]} -gt 0 ]; then
  # A missing engine or server stops the suite, naming it; a skipped test fails the run.
  pytest_opts+=("--require-engines=$(IFS=,; echo "${required[*]}")" --no-skips)
fi
"$VENV/bin/python" -m ruff check src tests benchmarks examples scripts
# The documentation site builds without a warning (strict), so the API reference cannot rot.
"$VENV/bin/python" -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
exec "$VENV/bin/python" -m pytest "${pytest_opts[@]}" "$@"
