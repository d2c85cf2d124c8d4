#!/usr/bin/env bash
# Install consist into .venv and run the main demo. Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_python.sh
"$VENV/bin/python" -m pip install -q -c constraints.txt -e .
"$VENV/bin/python" scripts/vendor-ui.py  # the web view's libraries (consist ui)
exec "$VENV/bin/python" examples/quickstart.py
