#!/usr/bin/env bash
# Sourced by quickstart.sh, test.sh and .ci/run: the system packages and the Python environment.
# Debian packages: the build needs of systemd-python, and the real parts the tests drive.
APT_PACKAGES="python3 python3-venv python3-dev gcc pkg-config libsystemd-dev systemd systemd-journal-remote
  rsyslog vsftpd zsh bash openssh-server openssh-client sshpass sudo util-linux bsdutils procps iproute2 e2fsprogs
  vim less passwd git make dpkg-dev debootstrap lintian rpm rpmlint postgresql postgresql-client
  chromium chromium-driver python3-systemd"
missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages:$missing (run as root, or install them)" >&2
    exit 1
  fi
  echo "setup: installing$missing" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11+ is needed ($PY is $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c 'import agent, receiver, pytest, pexpect' 2>/dev/null || [ pyproject.toml -nt .venv/.installed ] || [ setup.py -nt .venv/.installed ] \
    || [ -n "$(find agent collectors \( -name '*.c' -o -name '*.h' \) -newer .venv/.installed 2>/dev/null | head -1)" ]; then
  # (any compiled part changed: the editable install builds the extensions in place)
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -e '.[test]'
  touch .venv/.installed
fi
# byte-compiled once here, so that no start of the agent compiles its modules again (where
# PYTHONDONTWRITEBYTECODE is set, every start would: 50 ms of its start-up, bench/journald.py)
.venv/bin/python -m compileall -q agent collectors receiver >/dev/null
# The console's browser libraries (pinned, checked): fetched from the npm registry once.
if command -v npm >/dev/null 2>&1; then
  ./scripts/vendor-console.sh || exit 1
else
  echo "setup: npm not found; the console runs without its player and charts (install npm and run scripts/vendor-console.sh)" >&2
fi
