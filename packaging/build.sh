#!/bin/sh
# Build the alpacon-agent .deb or .rpm from this repository.
#
#   packaging/build.sh deb|rpm [OUTDIR]      (default OUTDIR: packaging/dist)
#
# Environment: VERSION (default: agent/__init__.py's), RELEASE (default 1),
# PYTHON (default /usr/bin/python3; its version is the one the package depends on).
# Needs dpkg-deb (deb) or rpmbuild (rpm); builds run as any user.
set -eu

FORMAT=${1:?usage: $0 deb|rpm [OUTDIR]}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
OUT=${2:-$HERE/dist}
VERSION=${VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/agent/__init__.py")}
RELEASE=${RELEASE:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
export PYTHON
PYVER=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
MAINTAINER="alpacon-agent developers <dev@alpacon-agent.invalid>"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/alpacon-pkg.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root

build_deb() {
    ARCH=$(dpkg --print-architecture)
    "$HERE/stage.sh" deb "$ROOT" "$VERSION"
    DOC=$ROOT/usr/share/doc/alpacon-agent
    install -m 0644 "$HERE/deb/copyright" "$DOC/copyright"
    {
        echo "alpacon-agent ($VERSION-$RELEASE) unstable; urgency=medium"
        echo
        echo "  * alpacon-agent $VERSION."
        echo
        echo " -- $MAINTAINER  $(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}")"
    } | gzip -9n >"$DOC/changelog.Debian.gz"
    install -d "$ROOT/usr/share/lintian/overrides"
    install -m 0644 "$HERE/deb/lintian-overrides" "$ROOT/usr/share/lintian/overrides/alpacon-agent"

    # shared-library dependencies of the compiled modules in the environment
    mkdir -p "$WORK/shlibs/debian"
    printf 'Source: alpacon-agent\n\nPackage: alpacon-agent\nArchitecture: any\n' \
        >"$WORK/shlibs/debian/control"
    SOFILES=$(find "$ROOT/opt" -name '*.so*' -type f)
    # shellcheck disable=SC2086
    SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O --ignore-missing-info \
        -l"$ROOT/opt/alpacon-agent/lib" $SOFILES 2>/dev/null | sed -n 's/^shlibs:Depends=//p')

    install -d -m 0755 "$ROOT/DEBIAN"
    for f in postinst prerm postrm; do
        install -m 0755 "$HERE/deb/$f" "$ROOT/DEBIAN/$f"
    done
    install -m 0644 "$HERE/deb/conffiles" "$ROOT/DEBIAN/conffiles"
    SIZE=$(du -sk --exclude=DEBIAN "$ROOT" | cut -f1)
    DEPENDS="python$PYVER, procps, init-system-helpers (>= 1.54~), ${SHLIBS:-libc6, libsystemd0}"
    sed -e "s|@VERSION@|$VERSION-$RELEASE|" -e "s|@ARCH@|$ARCH|" -e "s|@SIZE@|$SIZE|" \
        -e "s|@DEPENDS@|$DEPENDS|" -e "s|@MAINTAINER@|$MAINTAINER|" \
        "$HERE/deb/control.in" >"$ROOT/DEBIAN/control"
    (cd "$ROOT" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' \
        | LC_ALL=C sort -z | xargs -0 md5sum) >"$ROOT/DEBIAN/md5sums"
    chmod 0644 "$ROOT/DEBIAN/md5sums"
    DEB=$OUT/alpacon-agent_${VERSION}-${RELEASE}_$ARCH.deb
    dpkg-deb --root-owner-group -Zxz --build "$ROOT" "$DEB" >/dev/null
    echo "$DEB"
}

build_rpm() {
    "$HERE/stage.sh" rpm "$ROOT" "$VERSION"
    install -m 0644 "$HERE/deb/copyright" "$ROOT/usr/share/doc/alpacon-agent/copyright"
    mkdir -p "$WORK/rpm/SPECS" "$WORK/rpm/RPMS" "$WORK/rpm/BUILD"
    sed -e "s|@VERSION@|$VERSION|" -e "s|@RELEASE@|$RELEASE|" -e "s|@PYVER@|$PYVER|" \
        -e "s|@MAINTAINER@|$MAINTAINER|" \
        "$HERE/rpm/alpacon-agent.spec.in" >"$WORK/rpm/SPECS/alpacon-agent.spec"
    rpmbuild -bb --quiet \
        --define "_topdir $WORK/rpm" \
        --define "_stage $ROOT" \
        --define "_rpmdir $OUT" \
        --define "_build_id_links none" \
        --define "_unitdir /usr/lib/systemd/system" \
        --define "_sharedstatedir /var/lib" \
        "$WORK/rpm/SPECS/alpacon-agent.spec" >"$WORK/rpmbuild.log" 2>&1 \
        || { cat "$WORK/rpmbuild.log" >&2; exit 1; }
    find "$OUT" -name "alpacon-agent-$VERSION-$RELEASE.*.rpm" -newer "$WORK/rpm/SPECS/alpacon-agent.spec"
}

case "$FORMAT" in
    deb) build_deb ;;
    rpm) build_rpm ;;
    *) echo "$0: format must be deb or rpm" >&2; exit 2 ;;
esac
