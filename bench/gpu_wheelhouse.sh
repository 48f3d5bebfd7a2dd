#!/usr/bin/env bash
# The packages bench/gpu_check.sh needs that a bare CUDA image with torch and transformers lacks, gathered on this
# machine (it reaches PyPI; the lent GPU machine reaches no registry) into wheelhouse/ (git-ignored, about 20 MiB:
# carry it to the GPU machine with the working tree):
#   bash bench/gpu_wheelhouse.sh                 # from the repository root; then, there: bash bench/gpu_check.sh
# DeepSpeed as a pure-Python wheel built here without its kernels (DS_BUILD_OPS=0: they compile at first use where
# nvcc exists; without one the engine steps with torch's fused AdamW), at the version this project's venv runs,
# plus its and pytest's dependencies for CPython 3.10-3.13 on x86_64 Linux. Skips what it already holds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-wheelhouse}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p "$OUT"
ds=$(version deepspeed)
if [ ! -f "$OUT/deepspeed-$ds-py3-none-any.whl" ]; then
    DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation "deepspeed==$ds" -w "$OUT"
fi
# Pinned to what the venv runs (pydantic-core must match pydantic); torch, numpy, pyyaml come with the image.
pins=""
for pkg in einops hjson msgpack ninja packaging psutil py-cpuinfo pydantic pydantic-core annotated-types \
           typing-extensions typing-inspection tqdm pytest iniconfig pluggy pygments; do
    pins="$pins $pkg==$(version $pkg)"
done
for py in 3.10 3.11 3.12 3.13; do
    # shellcheck disable=SC2086  # pins is a list of words
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any --python-version "$py" -d "$OUT" $pins
done
echo "$OUT: $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1)"
