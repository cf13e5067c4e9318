#!/bin/sh
# Make (once) and unpack a clean Debian 12 (bookworm) minbase root for package tests.
#
#   packaging/debian12-root.sh DEST      unpack a fresh root into DEST (DEST must not exist)
#
# The first run debootstraps from the Debian mirror and caches the result as a tarball in
# $ALPACON_ROOT_CACHE (default /var/cache/alpacon-agent-test), so later runs take seconds.
# Needs root and debootstrap.
set -eu

DEST=${1:?usage: $0 DEST}
CACHE=${ALPACON_ROOT_CACHE:-/var/cache/alpacon-agent-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TARBALL=$CACHE/$SUITE-minbase.tar

if [ -e "$DEST" ]; then
    echo "$0: $DEST already exists" >&2
    exit 2
fi
mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    work=$(mktemp -d "$CACHE/build.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    debootstrap --variant=minbase "$SUITE" "$work/root" "$MIRROR"
    # a package index, so that apt can resolve the package's dependencies later
    cat >"$work/root/etc/apt/sources.list" <<LIST
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
LIST
    cp /etc/resolv.conf "$work/root/etc/resolv.conf"
    chroot "$work/root" apt-get update -q
    chroot "$work/root" apt-get clean
    tar -C "$work/root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
fi
mkdir -p "$DEST"
tar -C "$DEST" -xf "$TARBALL"
cp /etc/resolv.conf "$DEST/etc/resolv.conf"
