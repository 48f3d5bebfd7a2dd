"""LAMB under ZeRO: what real DeepSpeed engines apply (1 and 2 CPU ranks, gloo, fp32, dropout off) equals a plain
single-process LAMB over whole tensors written here, at every stage; a per-partition trust ratio (DeepSpeed
issue #490) fails the same checks."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from distill_helpers import REPO, distill_env, free_port

CHILD = REPO / "tests" / "lamb_child.py"
sys.path.insert(0, str(CHILD.parent))
from lamb_child import GLOBAL, MICRO, OVERRIDES, SEQ, batches  # noqa: E402

STEPS = 5
WEIGHT_STEPS = 3
# The key projection's bias has a gradient of exactly 0 in exact arithmetic (softmax over keys ignores a term
# q·b_k common to all keys): its Adam update follows rounding noise, which differs with any summation order.
# It is a vector (no trust ratio), so nothing LAMB decides is hidden by leaving it out.
NOISE_ONLY = "minialbert.layer.attention.key.bias"


def run_ranks(ranks: int, out, *runs: str) -> dict:
    """The child on ``ranks`` processes (a gloo world of their own); rank 0's results."""
    env = {**distill_env(), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(ranks),
           "LOCAL_SIZE": str(ranks), "PYTHONPATH": os.pathsep.join([str(REPO), str(CHILD.parent)])}
    procs = [subprocess.Popen([sys.executable, str(CHILD), str(out), str(STEPS), *runs], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for r in range(ranks)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errors)
    return torch.load(out, weights_only=False)


def reference_lamb(steps: int) -> dict:  # at tiny.yaml's learning rate, 1e-3
    """Single process, whole tensors, everything spelled out: mean of the micro-batch losses, global-norm clipping
    to 1 (DeepSpeed's), then LAMB with the run config's settings and the linear decay of warm-up 0."""
    from minialbert.config import load_run_config
    from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
    from tiny_models import tiny_config

    optim = load_run_config("configs/distill/tiny.yaml", OVERRIDES).optim
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(tiny_config())
    params = dict(model.named_parameters())
    moments = {k: (torch.zeros_like(p), torch.zeros_like(p)) for k, p in params.items()}
    (b1, b2), losses, weights = optim.betas, [], []
    for t, ids in enumerate(batches(steps), start=1):
        model.zero_grad()
        micro = ids.view(GLOBAL // MICRO, MICRO, SEQ)
        loss = sum(model(input_ids=m, labels=m).loss for m in micro) / len(micro)
        loss.backward()
        losses.append(float(loss.detach()))
        assert float(params[NOISE_ONLY].grad.norm()) < 1e-6 * float(params["minialbert.layer.attention.key.weight"].grad.norm())
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params.values()))
        clip = min(1.0, optim.max_grad_norm / float(norm))
        lr = optim.lr * (10 - (t - 1)) / 10
        with torch.no_grad():
            for k, p in params.items():
                g = p.grad * clip
                m, v = moments[k]
                m.mul_(b1).add_((1 - b1) * g)
                v.mul_(b2).add_((1 - b2) * g * g)
                u = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + optim.eps)
                if p.ndim >= 2:  # matrices: decay and trust ratio; vectors: neither
                    u = u + optim.weight_decay * p
                    w_norm, u_norm = float(p.norm()), float(u.norm())
                    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                    u = u * min(ratio, optim.max_trust_ratio)
                p.sub_(lr * u)
        weights.append({k: p.detach().clone() for k, p in params.items()})
    return {"losses": losses, "weights": weights}


def relative_errors(got: dict, want: dict) -> dict[str, float]:
    return {k: float((got[k] - want[k]).norm() / want[k].norm()) for k in want if k != NOISE_ONLY}


@pytest.fixture(scope="module")
def reference():
    return reference_lamb(STEPS)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    return run_ranks(1, tmp_path_factory.mktemp("lamb") / "one.pt", "1", "2", "3", "2+offload", "1+bf16",
                     "2:per-partition")


# The loss comparison at 10x the rate (1e-2), where five steps of per-partition ratios move the loss by more than
# 1e-5; the weights at tiny.yaml's 1e-3, where Adam's amplification of rounding in near-zero gradients (single rows
# of the tied embedding) stays within UPDATE_RTOL of the weights after three steps.
LOSS_LR = "@0.01"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    runs = ["0", "1", "2", "3", "2+offload", "1+bf16", "2:per-partition"]
    runs += [f"{stage}{LOSS_LR}" for stage in ("0", "1", "2", "3", "1:per-partition", "2:per-partition",
                                               "3:per-partition")]
    return run_ranks(2, tmp_path_factory.mktemp("lamb") / "two.pt", *runs)


# Rounding alone moves a tensor by up to ~1.2e-6 of its norm (measured on an AVX-512 CPU: a LayerNorm bias that
# starts at 0, after its first step, where near-zero gradients make Adam's update follow the rounding); a
# per-partition trust ratio moves the first step's weights by 4e-4 to 6e-4. The bound sits between them.
UPDATE_RTOL = 1e-5


def assert_applies_the_reference(run: dict, reference: dict) -> None:
    for step in range(WEIGHT_STEPS):
        errors = relative_errors(run["weights"][step], reference["weights"][step])
        worst = max(errors, key=errors.get)
        assert errors[worst] <= UPDATE_RTOL, f"step {step + 1}: {worst} differs by {errors[worst]:.2e} (relative)"


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_one_rank_applies_the_whole_tensor_update(one_rank, reference, stage):
    assert_applies_the_reference(one_rank[stage], reference)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["0", "1", "2", "3"])
def test_two_ranks_apply_the_whole_tensor_update(two_ranks, reference, stage):
    assert_applies_the_reference(two_ranks[stage], reference)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_cpu_offload_applies_the_whole_tensor_update(one_rank, two_ranks, reference, ranks):
    run = (one_rank if ranks == 1 else two_ranks)["2+offload"]
    assert run["optimizer"] == "DeepSpeedZeroOptimizer"
    assert_applies_the_reference(run, reference)


def assert_layout_covers_every_tensor(run: dict) -> None:
    """The pieces LAMB's trust ratios add up, over all ranks, hold every model tensor exactly once: the same
    element counts and squared norms (before the first step the fp32 masters equal the model's weights; bf16 ones
    are exact upcasts)."""
    sums = run["layout_sums"]
    torch.testing.assert_close(sums["layout"][1], sums["model"][1], rtol=0, atol=0)
    torch.testing.assert_close(sums["layout"][0], sums["model"][0], rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("ranks,run", [(1, r) for r in ("1", "2", "3", "2+offload", "1+bf16")]
                         + [(2, r) for r in ("0", "1", "2", "3", "2+offload", "1+bf16")])
def test_the_layout_holds_every_tensor_once(one_rank, two_ranks, ranks, run):
    assert_layout_covers_every_tensor((one_rank if ranks == 1 else two_ranks)[run])


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_bf16_zero1_steps_through_the_bf16_optimizer_layout(one_rank, two_ranks, ranks):
    run = (one_rank if ranks == 1 else two_ranks)["1+bf16"]
    assert run["optimizer"] == "BF16_Optimizer"
    assert_layout_covers_every_tensor(run)
    assert all(math.isfinite(loss) for loss in run["losses"]) and run["losses"][-1] < run["losses"][0]


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_per_partition_layouts_fail_the_layout_check(one_rank, two_ranks, ranks):
    with pytest.raises(AssertionError):
        assert_layout_covers_every_tensor((one_rank if ranks == 1 else two_ranks)["2:per-partition"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_two_rank_losses_at_every_stage_equal_those_without_partitioning(two_ranks, stage):
    for lr in ("", LOSS_LR):
        losses, unpartitioned = two_ranks[stage + lr]["losses"], two_ranks["0" + lr]["losses"]
        assert len(losses) == STEPS
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(unpartitioned), rtol=1e-5, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_per_partition_trust_ratios_fail_the_update_check(one_rank, two_ranks, reference, ranks):
    with pytest.raises(AssertionError):
        assert_applies_the_reference((one_rank if ranks == 1 else two_ranks)["2:per-partition"], reference)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "2", "3"])
def test_per_partition_trust_ratios_fail_the_loss_check(two_ranks, stage):
    losses = torch.tensor(two_ranks[f"{stage}:per-partition{LOSS_LR}"]["losses"])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(losses, torch.tensor(two_ranks["0" + LOSS_LR]["losses"]), rtol=1e-5, atol=0)
