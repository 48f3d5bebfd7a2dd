"""What the engine is built with (real DeepSpeed engines, ZeRO 1/2/3, one CPU rank): the optimizer's parameter
groups, the gradient-accumulation dtype of bf16 runs and the warm-up schedule at its edges."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distill_helpers import REPO, distill_env, free_port

pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys, torch
from minialbert import dist, engine as ds
from minialbert.config import load_run_config
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from tiny_models import tiny_config

stage, warmup, extra = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
cfg = load_run_config("configs/distill/tiny.yaml", [f"optim.warmup_steps={warmup}", "train.max_steps=10",
                                                    "train.global_batch_size=4", "train.micro_batch_size=2", *extra])
ctx = dist.init_distributed()
torch.manual_seed(0)
model = MiniAlbertForMaskedLM(tiny_config())
engine = ds.initialize(model, ds.build_ds_config(cfg, f"configs/ds/zero{stage}.json", 1, on_cuda=False),
                       cfg.optim, cfg.train.max_steps)
opt = engine.optimizer
lrs = []
for _ in range(3):
    lrs.append(opt.param_groups[0]["lr"])
    for _ in range(2):  # accumulation 2
        ids = torch.randint(5, 90, (2, 8))
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
expected = {True: 0, False: 0}
for p in model.parameters():
    expected[p.ndim >= 2] += p.numel()
print(json.dumps({
    "weight_decay": [g["weight_decay"] for g in opt.param_groups],
    "optimizer": type(opt).__name__,
    "accum_dtype": str(getattr(opt, "gradient_accumulation_dtype", None)),
    "decayed": expected[True], "not_decayed": expected[False],
    "group_numel": [sum(p.numel() for p in g["params"]) for g in opt.param_groups],
    "lrs": lrs,
    "state_dtypes": sorted({str(t.dtype) for st in engine.basic_optimizer.state.values() for t in st.values()
                            if torch.is_tensor(t)}),
    "inductor_imported": "torch._inductor.compile_fx" in sys.modules,
}))
"""


def engine_facts(stage: int, warmup: int, *extra: str, path: str | None = None) -> dict:
    env = {**distill_env(), "MASTER_PORT": str(free_port()), "PYTHONPATH": str(REPO / "tests")}
    if path is not None:
        env["PATH"] = path
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(stage), str(warmup), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_no_weight_decay_on_biases_and_layernorms_and_fp32_gradient_accumulation(stage):
    facts = engine_facts(stage, warmup=2)
    assert facts["weight_decay"] == [1e-4, 0.0]  # tiny.yaml's weight decay (the paper's), then none
    if stage < 3:  # ZeRO-1/2 groups hold this rank's flat fp32 partitions: the whole of each group on one rank
        assert facts["group_numel"] == [facts["decayed"], facts["not_decayed"]]
    if stage == 1:
        assert facts["optimizer"] == "BF16_Optimizer"  # DeepSpeed's fp32-accumulating bf16 optimizer
    else:
        assert facts["accum_dtype"] == "torch.float32"
    # Warm-up 2 of 10 steps: 0, half, then the full rate.
    assert facts["lrs"] == pytest.approx([0.0, 5e-4, 1e-3])
    # Building a ZeRO engine compiles nothing: DeepSpeed's Muon module is imported with its torch.compile deferred
    # (importing torch's inductor there cost every rank seconds at every start).
    assert not facts["inductor_imported"]


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_stage0_steps_the_model_itself_with_the_same_groups_and_schedule(optimizer):
    # No ZeRO (fp32: DeepSpeed keeps bf16 gradients without it): the optimizer holds the model's own tensors.
    facts = engine_facts(0, 2, "train.precision=fp32", f"optim.name={optimizer}")
    assert facts["optimizer"] == {"adamw": "AdamW", "lamb": "Lamb"}[optimizer]
    assert facts["weight_decay"] == [1e-4, 0.0]
    assert facts["group_numel"] == [facts["decayed"], facts["not_decayed"]]
    assert facts["lrs"] == pytest.approx([0.0, 5e-4, 1e-3])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_lamb_runs_under_zero_with_the_same_groups_and_schedule(stage):
    facts = engine_facts(stage, 2, "optim.name=lamb")  # bf16 training
    assert facts["state_dtypes"] == ["torch.float32"]  # the moments, beside DeepSpeed's fp32 master partitions
    assert facts["weight_decay"] == [1e-4, 0.0]
    assert facts["lrs"] == pytest.approx([0.0, 5e-4, 1e-3])


# 0: the full rate from the first step, then linear decay to 0 at step 10; 1: one step at 0, then the full rate
# and decay (DeepSpeed's own WarmupDecayLR rejects 0 and silently raises 1 to 2).
@pytest.mark.parametrize("warmup, lrs", [(0, [1e-3, 9e-4, 8e-4]), (1, [0.0, 1e-3, 1e-3 * 8 / 9])])
def test_warmup_of_zero_and_one_step(warmup, lrs):
    assert engine_facts(2, warmup)["lrs"] == pytest.approx(lrs)


SYSTEM_PATH = "/usr/bin:/bin"


@pytest.mark.skipif(shutil.which("ninja", path=SYSTEM_PATH) is None,
                    reason="no system ninja: a start without the environment on PATH has no other ninja to use")
def test_a_start_without_the_environment_on_path_reuses_the_built_cpu_ops():
    """The launcher puts the environment's bin folder (its ninja) on PATH; `python -m` and Slurm jobs of a shell
    that did not activate it see the system ninja first, whose build log the other discards: both rebuilt
    DeepSpeed's shared-memory op from scratch at every switch."""
    engine_facts(2, 0)  # built (or checked) as the launcher does
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    built = {p: p.stat().st_mtime_ns for p in root.glob("**/deepspeed_shm_comm/deepspeed_shm_comm.so")}
    assert built, f"no shared-memory op built under {root}"
    engine_facts(2, 0, path=SYSTEM_PATH)
    assert {p: p.stat().st_mtime_ns for p in built} == built, "the op was rebuilt"
