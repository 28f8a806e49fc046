#!/usr/bin/env bash
# Run the app's tests (tests/app, tests/ui) on the llama-cpp-python version the phone wheels carry,
# in a virtual environment of its own (.venv-phone-llama). Computers install the newer version
# pinned in pyproject.toml; Flet's mobile package index has only 0.3.32 for Android and iOS, so
# this is the check that one app codebase runs on both. Run scripts/setup.sh --dev first (Chromium,
# the test model). The first run compiles llama.cpp (about 10 minutes).
#   scripts/test-phone-llama.sh                 0.3.32, tests/app and tests/ui
#   scripts/test-phone-llama.sh -k engine       extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${LLAMA_VERSION:-0.3.32}
VENV=.venv-phone-llama
PY=${PYTHON:-python3}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
if ! "$VENV/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
  say "installing llama-cpp-python==$VERSION (compiles llama.cpp; log: $VENV/install.log)"
  "$VENV/bin/pip" install "llama-cpp-python==$VERSION" > "$VENV/install.log" 2>&1 \
    || { tail -20 "$VENV/install.log" >&2; exit 1; }
fi
# belle itself without its llama-cpp-python pin, then everything else the app's tests need
say "installing belle and the ui, serve and dev extras (llama-cpp-python stays at $VERSION)"
"$VENV/bin/pip" install -q --no-deps -e . >> "$VENV/install.log" 2>&1
mapfile -t deps < <("$VENV/bin/python" - <<'PY'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
extras = project["optional-dependencies"]
for dep in project["dependencies"] + extras["ui"] + extras["serve"] + extras["dev"]:
    if not dep.startswith("llama-cpp-python"):
        print(dep)
PY
)
"$VENV/bin/pip" install -q "${deps[@]}" >> "$VENV/install.log" 2>&1 || { tail -20 "$VENV/install.log" >&2; exit 1; }
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
exec "$VENV/bin/python" -m pytest tests/app tests/ui "$@"
