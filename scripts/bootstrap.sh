#!/usr/bin/env bash
# Create or reuse the virtual environment at .venv in the repo root and install the project into it.
# torch 2.13.0 comes first (the CPU wheel on local disk where there is one); the project's own range
# for torch is then already satisfied, so pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
py=.venv/bin/python
if ! "$py" -c 'import torch' 2>/dev/null; then
    "$py" -m pip install -q --disable-pip-version-check torch==2.13.0
fi
extras=${MINIALBERT_EXTRAS:-test,demo}
"$py" -m pip install -q --disable-pip-version-check -e ".[$extras]"
# transformers' own common model tests (tests/test_hf_common.py) come from the sdist of the installed version.
tf_version=$("$py" -c 'import transformers; print(transformers.__version__)' 2>/dev/null)
tf_tests=.cache/transformers-tests/$tf_version/tests
if [ ! -f "$tf_tests/test_modeling_common.py" ]; then
    tmp=$(mktemp -d)
    "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: --no-build-isolation \
        "transformers==$tf_version" -d "$tmp"
    tar -xzf "$tmp/transformers-$tf_version.tar.gz" -C "$tmp" "transformers-$tf_version/tests"
    touch "$tmp/transformers-$tf_version/tests/__init__.py"  # the sdist leaves out the package's empty __init__
    mkdir -p "$(dirname "$tf_tests")"
    rm -rf "$tf_tests" && mv "$tmp/transformers-$tf_version/tests" "$tf_tests"
    rm -rf "$tmp"
fi
# DeepSpeed JIT-compiles its CPU shared-memory collective op on first use (~30-100 s). Build it once here, in one
# process, so that ranks started together (tests, the demo, Slurm jobs) find it cached instead of racing to build it.
if [ -z "${CUDA_VISIBLE_DEVICES:-}" ] && ! "$py" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    DS_ACCELERATOR=cpu PATH="$PWD/.venv/bin:$PATH" "$py" - <<'PY' >/dev/null
import glob, os, time
from deepspeed.accelerator import get_accelerator
from torch.utils.cpp_extension import get_default_build_root

# A build killed half-way leaves its lock file, and torch then waits on it forever: drop locks older than 10 min.
root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
for lock in glob.glob(f"{root}/deepspeed_shm_comm/lock") + glob.glob(f"{root}/*/deepspeed_shm_comm/lock"):
    if time.time() - os.path.getmtime(lock) > 600:
        os.remove(lock)
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None:
    builder.load()
PY
fi
