#!/usr/bin/env bash
# Vendors the console's browser libraries from the npm registry into receiver/console/static/vendor/
# (pinned versions, checked against the committed SHA-256 sums), so the console needs no CDN and
# works offline. Run by setup.sh when the files are missing; packaging runs it before staging.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=receiver/console/static/vendor
sums=receiver/console/vendor.sha256
# package@version  file-in-package  name-in-vendor
FILES="asciinema-player@3.18.0 dist/bundle/asciinema-player.min.js asciinema-player.min.js
asciinema-player@3.18.0 dist/bundle/asciinema-player.css asciinema-player.css
uplot@1.6.32 dist/uPlot.iife.min.js uPlot.iife.min.js
uplot@1.6.32 dist/uPlot.min.css uPlot.min.css
asciinema-player@3.18.0 LICENSE asciinema-player.LICENSE
uplot@1.6.32 LICENSE uPlot.LICENSE"
if (cd "$dest" 2>/dev/null && sha256sum --quiet -c "../../vendor.sha256" >/dev/null 2>&1); then
  exit 0
fi
command -v npm >/dev/null || { echo "vendor-console: npm is needed to fetch the console's libraries" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$dest"
for pkg in $(echo "$FILES" | awk '{print $1}' | sort -u); do
  (cd "$tmp" && npm pack --silent "$pkg" >/dev/null && mkdir -p "$pkg" && tar xzf ./*.tgz -C "$pkg" --strip-components=1 && rm ./*.tgz)
done
echo "$FILES" | while read -r pkg file name; do
  cp "$tmp/$pkg/$file" "$dest/$name"
done
(cd "$dest" && sha256sum --quiet -c "../../vendor.sha256") || {
  echo "vendor-console: the fetched files do not match $sums" >&2; exit 1; }
