#!/usr/bin/env bash
# Set up (if needed) and start belle's chat on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/belle chat "$@"
