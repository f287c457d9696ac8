#!/usr/bin/env bash
# Developer entry point: `./run.sh demo` runs the demo, `./run.sh test` runs every check CI runs.
# Both create (or reuse) the git-ignored virtualenv .venv and install what they need into it.
set -euo pipefail
cd "$(dirname "$0")"
venv="${VENV:-.venv}"

ensure_venv() {
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    local stamp="$venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e ".[dev]"
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo)
        ensure_venv
        "$venv/bin/python" examples/normalize_bug.py
        "$venv/bin/python" examples/normalize_bug.py --fixed
        ;;
    test)
        ensure_venv
        "$venv/bin/ruff" check .
        "$venv/bin/ruff" format --check .
        "$venv/bin/mypy" lightning_sanity
        shift
        "$venv/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: $0 demo | test [pytest args]" >&2
        exit 2
        ;;
esac
