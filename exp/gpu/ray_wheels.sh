#!/usr/bin/env bash
# Wheels for a Ray sweep on the GPU machine (no network there; a call carries at most 64 MiB).
# Ray's wheel is 79 MB, 32 MB of it the jars of Ray's Java workers, which a Python sweep never starts:
# this downloads ray and the packages it needs that the GPU machine lacks, and repacks ray's wheel
# without ray/jars and the dashboard's source maps (about 46 MB), into .whl/ (ignored by git).
#
#   bash exp/gpu/ray_wheels.sh [PYTHON_VERSION=3.12] [RAY_VERSION=2.60.0]
# then carry .whl and start the device command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PYTHONPATH
# Do not carry the mamba-ssm wheels in the same call: together they pass the limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV=${PYTHON_VERSION:-3.12}
RAY=${RAY_VERSION:-2.60.0}
OUTDIR=${OUTDIR:-.whl}
mkdir -p "$OUTDIR"
tmp=$(mktemp -d)
plat=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
pip_dl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  "${plat[@]}" -d "$1" "${@:2}"; }
pip_dl "$tmp" "ray==$RAY"
# Ray's requirements that the GPU machine may lack (it has filelock, packaging and pyyaml; requests and
# its own needs come along in case transformers 5 no longer pulls them in). One version of each.
pip_dl "$OUTDIR" msgpack protobuf jsonschema jsonschema-specifications referencing rpds-py attrs click \
  requests urllib3 idna charset-normalizer certifi
python3 - "$tmp"/ray-*.whl "$OUTDIR" <<'PY'
import os, sys, zipfile
src, outdir = sys.argv[1], sys.argv[2]
drop = lambda n: n.startswith("ray/jars/") or n.endswith(".js.map")
dst = os.path.join(outdir, os.path.basename(src))
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if drop(item.filename):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # keep RECORD true to what is in the wheel
            data = b"".join(l + b"\n" for l in data.splitlines() if not drop(l.split(b",")[0].decode()))
        zout.writestr(item, data)
print(f"{dst}: {os.path.getsize(dst) / 1e6:.1f} MB (from {os.path.getsize(src) / 1e6:.1f} MB)")
PY
rm -rf "$tmp"
du -ch "$OUTDIR"/*.whl | tail -1
