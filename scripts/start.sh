#!/usr/bin/env bash
# Set up (if needed) and open the chat app on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/belle ui "$@"
