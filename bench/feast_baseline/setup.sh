#!/usr/bin/env bash
# Create bench/feast_baseline/.venv: Feast's own environment, never a dependency of Lathe.
#
#   bash bench/feast_baseline/setup.sh            # feast as pinned (requirements.txt + .lock)
#   bash bench/feast_baseline/setup.sh --latest   # the newest feast, unpinned (then re-pin)
#
# Needs Python 3.11 (as Lathe); set PYTHON to use another interpreter. Idempotent.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
venv="$here/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip

if [[ "${1:-}" == "--latest" ]]; then
    "$venv/bin/python" -m pip install --upgrade feast
else
    "$venv/bin/python" -m pip install -r "$here/requirements.txt" -c "$here/requirements.lock"
fi

# Feast must not bring torch (or any CUDA wheel) into this environment.
if "$venv/bin/python" -m pip show torch >/dev/null 2>&1; then
    echo "error: torch was pulled into $venv" >&2
    exit 1
fi
"$venv/bin/python" -c 'import feast; print("feast", feast.__version__, "in", "'"$venv"'")'
