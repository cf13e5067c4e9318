#!/bin/sh
# Stage the installed file tree of the alpacon-agent package.
#
#   packaging/stage.sh deb|rpm DESTDIR VERSION
#
# Builds wheels of this repository and its dependencies (the only step that needs the
# network: PyPI, or a pip cache/mirror), then a self-contained virtual environment at
# DESTDIR/opt/alpacon-agent on the system's Python 3.11+ ($PYTHON, default /usr/bin/python3),
# relocated to /opt/alpacon-agent, plus the command link, the systemd unit, the default
# config and the docs. Nothing is fetched at install time.
set -eu

LAYOUT=${1:?usage: $0 deb|rpm DESTDIR VERSION}
DEST=${2:?usage: $0 deb|rpm DESTDIR VERSION}
VERSION=${3:?usage: $0 deb|rpm DESTDIR VERSION}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-/usr/bin/python3}
PREFIX=/opt/alpacon-agent

case "$LAYOUT" in
    deb) UNITDIR=/lib/systemd/system ;;
    rpm) UNITDIR=/usr/lib/systemd/system ;;
    *) echo "$0: layout must be deb or rpm" >&2; exit 2 ;;
esac

PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
case "$PYVER" in
    3.1[1-9]) ;;
    *) echo "$0: $PYTHON is Python $PYVER; 3.11 or newer is needed" >&2; exit 2 ;;
esac
# the venv points at the versioned interpreter, so a later default python3 cannot break it
PYBIN=/usr/bin/python$PYVER

WORK=$(mktemp -d "${TMPDIR:-/tmp}/alpacon-stage.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# 1. the source: the working tree's files (tracked and new, not ignored)
mkdir "$WORK/src"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z -co --exclude-standard \
        | tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2>/dev/null \
        | tar -C "$WORK/src" -xf -
else
    tar -C "$REPO" --exclude=.git --exclude=.venv -cf - . | tar -C "$WORK/src" -xf -
fi
# the package's version is the agent's version
sed -i "s/^version = \".*\"/version = \"$VERSION\"/" "$WORK/src/pyproject.toml"
sed -i "s/^__version__ = \".*\"/__version__ = \"$VERSION\"/" "$WORK/src/agent/__init__.py"

# 2. wheels of the agent and its dependencies, built with the target Python
"$PYBIN" -m venv "$WORK/buildenv"
"$WORK/buildenv/bin/pip" install -q --upgrade pip wheel
# a wheel cache of its own per interpreter: a cached wheel built by another Python of the
# same version (pyenv, a venv) would carry that Python's library path
PIP_CACHE=${PIP_CACHE:-$REPO/packaging/build/pip-cache-$(basename "$PYBIN")}
"$WORK/buildenv/bin/pip" wheel -q --cache-dir "$PIP_CACHE" --wheel-dir "$WORK/wheels" \
    "$WORK/src" -r "$REPO/packaging/requirements.txt"

# 3. the runtime environment, without pip, relocated to its final path
VENV=$DEST$PREFIX
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PYBIN" -m venv --without-pip "$VENV"
"$WORK/buildenv/bin/pip" --python "$VENV/bin/python" install -q --no-index --no-compile \
    --no-warn-script-location --find-links "$WORK/wheels" \
    "alpacon-agent==$VERSION" -r "$REPO/packaging/requirements.txt"
rm -f "$VENV"/bin/activate* "$VENV"/bin/Activate.ps1
for f in "$VENV"/bin/* "$VENV/pyvenv.cfg"; do
    if [ -f "$f" ] && [ ! -L "$f" ] && grep -qI "$VENV" "$f"; then
        sed -i "s|$VENV|$PREFIX|g" "$f"
    fi
done
find "$VENV" -name direct_url.json -delete
# library files are not programs: a wheel that ships its modules and metadata executable
# (protobuf does) loses the bit, except on compiled modules and real scripts ("#!")
find "$VENV/lib" -type f -perm /111 ! -name '*.so' ! -name '*.so.*' -exec sh -c \
    'for f; do [ "$(head -c 2 "$f")" = "#!" ] || chmod a-x "$f"; done' _ {} +
# library modules are not scripts: drop the "#!" line of non-executable .py files
find "$VENV/lib" -name '*.py' -type f ! -perm -u+x -exec grep -l -m1 '^#!' {} + 2>/dev/null \
    | while read -r f; do sed -i '1{/^#!/d}' "$f"; done
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$VENV" -name '*.so*' -type f -exec strip --strip-unneeded --remove-section=.comment {} +
# compiled modules must find their libraries on the target (no RUNPATH outside the env)
for so in $(find "$VENV" -name '*.so*' -type f); do
    if readelf -d "$so" 2>/dev/null | grep -E 'R(UN)?PATH' | grep -v '\$ORIGIN' >&2; then
        echo "$0: $so has a RUNPATH into the build machine" >&2
        exit 1
    fi
done
if grep -rIl "$DEST" "$VENV" >/dev/null 2>&1; then
    echo "$0: staging path left in:" >&2
    grep -rIl "$DEST" "$VENV" >&2
    exit 1
fi
if [ "$LAYOUT" = rpm ]; then
    # rpm ships byte-code (deb compiles it at install time, see postinst)
    "$VENV/bin/python" -m compileall -q -s "$DEST" -p / "$VENV/lib" >/dev/null
fi

# 4. command, unit, config, docs
install -d "$DEST/usr/bin" "$DEST$UNITDIR" "$DEST/etc/alpacon-agent" \
    "$DEST/usr/share/doc/alpacon-agent"
ln -sf "$PREFIX/bin/alpacon-agent" "$DEST/usr/bin/alpacon-agent"
install -m 0644 "$REPO/systemd/alpacon-agent.service" "$DEST$UNITDIR/alpacon-agent.service"
install -m 0644 "$REPO/config/agent.yaml" "$DEST/etc/alpacon-agent/agent.yaml"
install -m 0644 "$REPO/docs/install.md" "$DEST/usr/share/doc/alpacon-agent/install.md"
echo "$PYBIN" >"$WORK/pybin"
echo "staged $LAYOUT tree in $DEST (Python $PYVER)"
