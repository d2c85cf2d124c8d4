#!/usr/bin/env bash
# Install the test dependencies and run the whole suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
"$VENV/bin/python" -m pip install -q -e '.[test]'
"$VENV/bin/python" -m ruff check src tests benchmarks examples
"$VENV/bin/python" examples/quickstart.py >/dev/null
exec "$VENV/bin/python" -m pytest "$@"
