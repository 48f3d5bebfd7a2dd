#!/usr/bin/env bash
# GPU check for the distillation step: the CUDA tests, then the DeepSpeed engine step that distill.py runs (ZeRO-2,
# bf16; maps-free vs materialised attention at b64, L 128/256/512), then original vs fast at b64 s256.
#
#   bash bench/gpu_check.sh            # from the repository root, on a machine with one CUDA GPU
#   OUT=/some/dir bash bench/gpu_check.sh
#
# Expects: a Python (PYTHON, else .venv/bin/python, else python3) whose torch already has CUDA — the script never
# installs torch. What is missing among deepspeed, transformers, safetensors, pytest, pyyaml it installs from
# wheelhouse/ (gathered beforehand on a machine with PyPI: bash bench/gpu_wheelhouse.sh; carry the folder), else
# from PyPI. Budget: under 10 minutes on one H100/H200 (tests ~1 min, engine step ~3 min, original vs fast ~2 min).
# Results (logs and JSON lines) go to $OUT (default: ./gpu_check_out); summary.txt holds the tables.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then PY=.venv/bin/python; else PY=python3; fi
fi
log() { echo "[gpu_check] $*" | tee -a "$OUT/summary.txt"; }

if ! "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch has no CUDA device"' 2>"$OUT/torch_error.txt"; then
  log "FAIL: $PY cannot import a CUDA torch: $(tail -1 "$OUT/torch_error.txt")"
  exit 2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' | tee -a "$OUT/summary.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv >>"$OUT/summary.txt" 2>/dev/null || true

# What a bare CUDA image with torch lacks (never torch: its CUDA build is what this machine already has): from
# wheelhouse/ when it was gathered beforehand (bash bench/gpu_wheelhouse.sh; the GPU machine reaches no registry),
# else from PyPI.
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"deepspeed": "deepspeed", "transformers": "transformers>=5.0,<6", "safetensors": "safetensors",
        "pytest": "pytest", "yaml": "pyyaml"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -d wheelhouse ]; then
    log "pip installing from wheelhouse/: $missing"
    "$PY" -m pip install --quiet --no-index --find-links wheelhouse $missing >>"$OUT/pip.txt" 2>&1 \
      || log "WARN: pip install from wheelhouse/ failed (see pip.txt)"
  else
    log "pip installing from PyPI: $missing"
    "$PY" -m pip install --quiet $missing >>"$OUT/pip.txt" 2>&1 || log "WARN: pip install failed (see pip.txt)"
  fi
fi
export DS_ACCELERATOR=cuda
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
log "pytest -m gpu ($(grep -l "mark.gpu" tests/*.py | tr "\n" " "))"
# Only the modules that hold GPU tests: the others import CPU-side tools (deepspeed, seqeval) this box may lack.
gpu_tests=$(grep -l "mark.gpu" tests/*.py)
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider $gpu_tests >"$OUT/pytest_gpu.txt" 2>&1
rc=$?; tail -3 "$OUT/pytest_gpu.txt" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { log "pytest -m gpu: exit $rc"; status=1; }

# The step distill.py runs, on its DeepSpeed engine (ZeRO-2, bf16, train.compile=auto: its loss terms compiled):
# maps-free vs materialised attention term.
log "DeepSpeed engine step, b64, L 128/256/512, fused vs materialised, loss terms compiled"
timeout 240 "$PY" bench/bench_engine_step.py --device cuda --batch 64 --seqs 128,256,512 --steps 6 --warmup 2 \
  --json-out "$OUT/engine_step.json" >"$OUT/engine_step.txt" 2>&1
rc=$?; grep -E "^(DeepSpeed engine step|\|)" "$OUT/engine_step.txt" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { log "engine step: exit $rc (tail of log follows)"; tail -5 "$OUT/engine_step.txt" | tee -a "$OUT/summary.txt"; status=1; }

# The original recipe against the fast step at the MFU goal's shape (plain torch, no DeepSpeed), the fast step's
# loss terms compiled (Triton) and eager side by side.
log "original vs fast (compiled and eager loss terms), b64 s256"
timeout 180 "$PY" bench/bench_distill.py --device cuda --batch 64 --seq 256 --steps 8 --warmup 3 --compile both \
  --json-out "$OUT/bench_b64_s256.json" >"$OUT/bench_b64_s256.txt" 2>&1
rc=$?; grep -E "^(recipe|original|fast|speedup)" "$OUT/bench_b64_s256.txt" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { log "benchmark b64 s256: exit $rc (tail of log follows)"; tail -5 "$OUT/bench_b64_s256.txt" | tee -a "$OUT/summary.txt"; status=1; }
log "done, status $status; results in $OUT"
exit $status
