#!/usr/bin/env bash
# Packs what the GPU image lacks for a whole pipeline run (benchmarks/plate_run.py): polars (+ its runtime),
# duckdb, pydantic, cellpose and its small deps, platformdirs -- for CPython 3.12 on x86-64 -- into one file,
# .whl/plate_deps.tar.xz, that gpu_run.sh unpacks into /tmp/site.
#
# Why a tarball and not wheels: the wheels are ~83 MB (polars' runtime 54 MB, duckdb 25 MB) and the device's
# transfer limit is 64 MiB for the whole working tree (the repo itself is ~17 MB). Unpacked, with polars'
# library stripped of its symbol table and everything xz -9e compressed, they come to ~48.7 MB (measured
# 2026-12-07 with polars 2.1.0, duckdb 2.0.1): repo + tarball ~63 MiB. Nothing else fits beside it: carry
# .whl holding this file only (gpu_run.sh's other sections need nothing more than it holds).
#
# Usage (repo root, on the development box; ~5 min of 2 cores):  bash benchmarks/plate_deps.sh
# Then on the device:  carry [".whl"], command "OUT=$OUT bash benchmarks/gpu_run.sh plate"
set -eu
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pins=""
for pkg in polars polars-runtime-32 duckdb pydantic pydantic_core typing-inspection annotated-types cellpose \
           fastremap fill-voids natsort roifile segment_anything platformdirs; do
    v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg" 2>/dev/null || true)
    pins="$pins ${pkg}${v:+==$v}"
done
echo "packages:$pins"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$work/wheels" $pins
mkdir -p "$work/site"
for w in "$work"/wheels/*.whl; do unzip -q -o "$w" -d "$work/site"; done
find "$work/site" -name '*.so' -exec strip --strip-unneeded {} \;
rm -rf "$work/site/cellpose/gui" "$work/site/cellpose/logo" "$work/site/_duckdb-stubs"
mkdir -p .whl
tar -C "$work/site" -cf - . | xz -9e -T2 > .whl/plate_deps.tar.xz
size=$(stat -c %s .whl/plate_deps.tar.xz)
repo=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
echo ".whl/plate_deps.tar.xz: $size bytes; tracked repo files: $repo bytes; together $(( (size + repo) / 1048576 )) MiB of 64"
ls .whl
