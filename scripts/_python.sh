# Sourced by the set-up scripts: find Python >= 3.11 with venv, installing Debian's if needed,
# and create the project's virtual environment in .venv.
set -euo pipefail

find_python() {
  local c
  for c in "${PYTHON:-}" python3.13 python3.12 python3.11 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

PY=$(find_python || true)
if [ -z "$PY" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[consist] installing Debian's python3, python3-venv and python3-pip" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends python3 python3-venv python3-pip >/dev/null
    PY=$(find_python) || { echo "[consist] no Python >= 3.11 with venv found" >&2; exit 1; }
  else
    echo "[consist] need Python >= 3.11 with the venv module (apt-get install python3-venv)" >&2
    exit 1
  fi
fi

VENV=${CONSIST_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[consist] creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q "pip==26.3" >/dev/null  # pinned like the rest (constraints.txt)
fi
