#!/usr/bin/env bash
# Packs the prebuilt mamba-ssm and causal-conv1d wheels (the folder given, where the team keeps them) as one
# unpacked site folder in .whl/site.tar.xz, for a device call's carry (`carry: [".whl"]`): 59.1 MB with xz -9e
# against 60.7 MB of wheels. The device scripts unpack it with `tar xJf .whl/site.tar.xz -C /tmp` and put
# /tmp/site on PYTHONPATH (session13_call5.sh, session14_call3.sh). .whl/ is git-ignored.
#   bash exp/gpu/pack_site.sh <folder with the .whl files>
set -euo pipefail
cd "$(dirname "$0")/../.."
src=${1:?pass the folder that holds the mamba-ssm and causal-conv1d wheels}
ls "$src"/*.whl > /dev/null
tmp=$(mktemp -d)
mkdir -p "$tmp/site" .whl
for w in "$src"/*.whl; do python3 -m zipfile -e "$w" "$tmp/site/"; done
tar cf - -C "$tmp" site | xz -9e -T4 > .whl/site.tar.xz
rm -rf "$tmp"
ls -l .whl/site.tar.xz
