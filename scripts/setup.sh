#!/usr/bin/env bash
# Set up belle in ./.venv: Python packages, the default model, and (with --dev) what the tests need
# (Debian packages chromium and tmux, training/quantize extras). Idempotent: a second run only checks.
#   scripts/setup.sh          the app (CLI + UI)
#   scripts/setup.sh --dev    everything, for the test suite
set -euo pipefail
cd "$(dirname "$0")/.."

DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}
VENV=.venv

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "belle needs Python 3.10 or newer (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi

if [ "$DEV" = 1 ]; then
  missing=()
  command -v tmux >/dev/null || missing+=(tmux)
  command -v chromium >/dev/null || missing+=(chromium)
  [ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || missing+=(fonts-noto-cjk)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }

extras="ui,serve"
[ "$DEV" = 1 ] && extras="ui,serve,quantize,train,dev"
# Re-install only when pyproject.toml or the extras changed.
stamp="$VENV/.belle-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  log="$VENV/install.log"
  say "installing Python packages [$extras]; the first time llama-cpp-python compiles llama.cpp (~10 minutes; log: $log)"
  pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1 || {
    tail -n 40 "$log" >&2; echo "setup: pip install $* failed; full log in $log" >&2; exit 1; }; }
  : >"$log"
  pip_install --upgrade pip setuptools wheel
  # CPU torch: any requirement torch 2.13 does not satisfy makes pip pull the newest multi-GB CUDA
  # build; pinning 2.13 keeps the CPU build.
  [ "$DEV" = 1 ] && pip_install "torch==2.13.*"
  CMAKE_ARGS="${CMAKE_ARGS:--DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}" \
    pip_install -e ".[$extras]"
  rm -f "$VENV"/.belle-installed-*
  touch "$stamp"
fi

say "default model"
"$VENV/bin/belle" models pull "$("$VENV/bin/belle" models default)"
