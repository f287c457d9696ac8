#!/usr/bin/env bash
# Developer entry point: `./run.sh demo` runs the demo, `./run.sh test` runs every check CI runs.
# Both create (or reuse) the git-ignored virtualenv .venv and install what they need into it.
# `test` also runs the fast tests against the oldest lightning and torchmetrics that pyproject.toml
# admits, in a second git-ignored virtualenv .venv-oldest that reuses .venv's torch (no second
# multi-GB install): its own site-packages shadow .venv's for just those two packages.
set -euo pipefail
cd "$(dirname "$0")"
venv="${VENV:-.venv}"
oldest="${VENV_OLDEST:-.venv-oldest}"

ensure_venv() {
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    local stamp="$venv/.installed-$(cat pyproject.toml | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet --upgrade pip
        "$venv/bin/python" -m pip install --quiet -e ".[dev,clients]"
        touch "$stamp"
    fi
}

# The `>=` lower bound that pyproject.toml declares for package $1.
lower_bound() {
    sed -nE "s/^ *\"$1>=([0-9][^\",;]*)\",?$/\1/p" pyproject.toml
}

ensure_oldest_venv() {
    local pins="lightning==$(lower_bound lightning) torchmetrics==$(lower_bound torchmetrics)"
    local stamp="$oldest/.installed-$(echo "$pins" | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        rm -rf "$oldest"
        python3 -m venv "$oldest"
        # shellcheck disable=SC2086
        "$oldest/bin/python" -m pip install --quiet --no-deps $pins
        local own shared
        own=$("$oldest/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        shared=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        realpath "$shared" > "$own/zz_reuse_main_venv.pth"
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
        ensure_oldest_venv
        "$venv/bin/ruff" check .
        "$venv/bin/ruff" format --check .
        "$venv/bin/mypy" lightning_sanity
        shift
        echo "--- fast tests with the oldest admitted versions:" \
            "$(PYTHONPATH=$PWD "$oldest/bin/python" -c 'import lightning, torchmetrics; print("lightning", lightning.__version__, "torchmetrics", torchmetrics.__version__)')"
        PYTHONPATH="$PWD" "$oldest/bin/python" -m pytest -m "not slow" -q -p no:cacheprovider "$@"
        echo "--- all tests with the installed (newest) versions"
        "$venv/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: $0 demo | test [pytest args]" >&2
        exit 2
        ;;
esac
