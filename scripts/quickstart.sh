#!/usr/bin/env bash
# Set everything up on a fresh Debian machine and run the agent on its embedded default:
# a local reference receiver and the real local sources (journal, syslog, system signs).
# Extra arguments go to `alpacon-agent demo` (--dir, --port, --metrics-port).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec .venv/bin/alpacon-agent demo "$@"
