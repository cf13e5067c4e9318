#!/usr/bin/env bash
# Set everything up on a fresh Debian machine and run the agent on its embedded default:
# a local reference receiver and the real local sources (journal, syslog, system signs).
# Extra arguments go to `alpacon-agent demo` (--dir, --port, --metrics-port).
# It needs root (Debian packages, the whole journal): run by another user it starts itself
# again under sudo; where sudo is not installed (a container, a minimal VM) run it as root.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
  if command -v sudo >/dev/null 2>&1; then
    exec sudo -- "$self" "$@"
  fi
  echo "quickstart: needs root, and sudo is not installed: run it as root (su -c $self)" >&2
  exit 1
fi
cd "$(dirname "$0")/.."
. scripts/setup.sh
exec .venv/bin/alpacon-agent demo "$@"
