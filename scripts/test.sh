#!/usr/bin/env bash
# The full test suite: lint, then every test against the real parts (journald, rsyslog,
# PTYs, OpenSSH, the reference receiver), which the tests start themselves.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
