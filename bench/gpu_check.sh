#!/usr/bin/env bash
# GPU check for the distillation step: CUDA tests, then the benchmark at b64 s256 and the paper's per-GPU b48 s256.
#
#   bash bench/gpu_check.sh            # from the repository root, on a machine with one CUDA GPU
#   OUT=/some/dir bash bench/gpu_check.sh
#
# Expects: a Python (PYTHON, else .venv/bin/python, else python3) whose torch already has CUDA — the script never
# installs torch. It pip-installs from PyPI only what is missing among transformers, safetensors, pytest,
# pyyaml (the packages these tests and the benchmark import). Budget: about 8 minutes on one H100/H200
# (tests ~1 min, each benchmark ~1-2 min). Results (logs and JSON lines) go to $OUT (default: ./gpu_check_out).
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

# Missing pure-Python dependencies from PyPI (never torch: its CUDA build is what this machine already has).
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"transformers": "transformers>=5.0,<6", "safetensors": "safetensors", "pytest": "pytest", "yaml": "pyyaml"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  log "pip installing: $missing"
  "$PY" -m pip install --quiet $missing >>"$OUT/pip.txt" 2>&1 || log "WARN: pip install failed (see pip.txt)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

status=0
log "pytest -m gpu ($(grep -l "mark.gpu" tests/*.py | tr "\n" " "))"
# Only the modules that hold GPU tests: the others import CPU-side tools (deepspeed, seqeval) this box may lack.
gpu_tests=$(grep -l "mark.gpu" tests/*.py)
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider $gpu_tests >"$OUT/pytest_gpu.txt" 2>&1
rc=$?; tail -3 "$OUT/pytest_gpu.txt" | tee -a "$OUT/summary.txt"
[ $rc -eq 0 ] || { log "pytest -m gpu: exit $rc"; status=1; }

for shape in "64 256" "48 256"; do
  set -- $shape
  name="b$1_s$2"
  log "benchmark $name"
  timeout 150 "$PY" bench/bench_distill.py --device cuda --batch "$1" --seq "$2" --steps 8 --warmup 3 \
    --json-out "$OUT/bench_$name.json" >"$OUT/bench_$name.txt" 2>&1
  rc=$?; grep -E "^(recipe|original|fast|speedup)" "$OUT/bench_$name.txt" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || { log "benchmark $name: exit $rc (tail of log follows)"; tail -5 "$OUT/bench_$name.txt" | tee -a "$OUT/summary.txt"; status=1; }
done
log "done, status $status; results in $OUT"
exit $status
