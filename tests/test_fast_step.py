"""The fast distillation step (the project's path) computes the original recipe's losses, and trains.

Tiny shapes: teacher 4 layers x 32, student 2 recursions x 32, vocab 100. The original recipe is the one the
benchmark times (bench/distill_recipes.py), written from nlpie-research/MiniALBERT's general_distillation.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from distill_recipes import FastRecipe, OriginalRecipe, build_models, make_batch  # noqa: E402

from minialbert.flops import distillation_step_flops, measure_peak_flops  # noqa: E402


def tiny_pair(tiny, dropout: float = 0.0):
    from transformers import BertConfig

    teacher_cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                             attention_probs_dropout_prob=dropout)
    student_cfg = tiny(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return teacher_cfg, student_cfg


@pytest.mark.parametrize("padded_rows", [0, 2])
def test_fast_fp32_paper_mode_matches_original_losses(tiny, padded_rows):
    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=3)
    batch = make_batch(100, batch=3, seq=16, seed=4, padded_rows=padded_rows)
    original = OriginalRecipe.build(teacher, student)
    fast = FastRecipe.build(teacher, student, torch.float32, mode="paper")
    with torch.no_grad():
        total, mlm, att, hid, out = original.losses(batch)
        terms = fast.losses(batch)
    for name, want in (("total", total), ("mlm", mlm), ("attention", att), ("hidden", hid), ("output", out)):
        torch.testing.assert_close(getattr(terms, name), want, rtol=1e-5, atol=1e-6, msg=name)
    assert att > 0 and hid > 0 and out > 0  # every term is live, so the comparison means something


def test_fast_and_original_steps_train_the_same(tiny):
    """Three optimizer steps from the same weights: fp32 fast (paper mode) follows the original's losses."""
    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=5)
    batches = [make_batch(100, batch=2, seq=12, seed=s) for s in range(3)]
    original = OriginalRecipe.build(teacher, student)
    fast = FastRecipe.build(teacher, student, torch.float32, mode="paper")
    want = [original.step(b) for b in batches]
    got = [fast.step(b) for b in batches]
    assert want[2] < want[0]
    assert got == pytest.approx(want, rel=1e-4)


def test_bf16_fast_step_updates_fp32_master_and_model(tiny):
    teacher_cfg, student_cfg = tiny_pair(tiny, dropout=0.1)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=6)
    fast = FastRecipe.build(teacher, student, torch.bfloat16)
    before = [m.detach().clone() for m in fast.master]
    batch = make_batch(100, batch=2, seq=12, seed=7)
    loss = fast.step(batch)
    assert torch.isfinite(torch.tensor(loss))
    params = [p for p in fast.student.parameters() if p.requires_grad]
    assert all(p.dtype == torch.bfloat16 and p.grad is None for p in params)
    assert all(m.dtype == torch.float32 for m in fast.master)
    changed = sum(not torch.equal(a, b) for a, b in zip(before, fast.master))
    assert changed == len(before)
    # the bf16 model holds the rounded master weights
    torch.testing.assert_close(params[0].float(), fast.master[0].bfloat16().float())


def test_flop_count_matches_flop_counter(tiny):
    from bench_distill import counted_flops  # flop_counter, with CPU flash attention counted too

    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=8)
    batch = make_batch(100, batch=2, seq=16, seed=9)
    masked = int((batch["labels"] != -100).sum())
    original = OriginalRecipe.build(teacher, student)
    fast = FastRecipe.build(teacher, student, torch.float32, mode="paper")
    maps = FastRecipe.build(teacher, student, torch.float32, mode="paper", attention_kl="materialised")
    assert counted_flops(lambda: original.step(batch)) == distillation_step_flops(
        teacher_cfg, student_cfg, 2, 16, masked / 32, all_positions_logits=True, attention_kl="materialised")
    assert counted_flops(lambda: fast.step(batch)) == distillation_step_flops(teacher_cfg, student_cfg, 2, 16, masked / 32)
    assert counted_flops(lambda: maps.step(batch)) == distillation_step_flops(
        teacher_cfg, student_cfg, 2, 16, masked / 32, attention_kl="materialised")


def test_the_bf16_cpu_steps_scores_route_is_counted_as_it_runs(tiny):
    """bf16 on a CPU at a short length: the attention KL's scores route (q·kᵀ blocks) and the student's blockwise
    attention, counted product by product."""
    from bench_distill import counted_flops

    from minialbert.attention_kl import scores_route

    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=8)
    batch = make_batch(100, batch=2, seq=16, seed=9)
    masked = int((batch["labels"] != -100).sum())
    fast = FastRecipe.build(teacher, student, torch.bfloat16)
    assert scores_route(torch.bfloat16, torch.device("cpu"), 16)
    assert counted_flops(lambda: fast.step(batch)) == distillation_step_flops(
        teacher_cfg, student_cfg, 2, 16, masked / 32, scores_route=True)


def test_a_step_whose_loss_reads_no_logits_runs_no_mlm_head_and_counts_none(tiny):
    """loss.mlm 0 and no output term (cpu.yaml with a teacher without an MLM head): neither head runs, the
    student's gets no gradient and keeps its weights, the FLOP count leaves both heads out, the terms read 0."""
    from bench_distill import counted_flops

    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=8)
    batch = make_batch(100, batch=2, seq=16, seed=9)
    masked = int((batch["labels"] != -100).sum())
    fast = FastRecipe.build(teacher, student, torch.float32, logit_terms=False)
    heads_run = []
    for head in (fast.student.mlm_head, fast.teacher.hf.cls):
        head.register_forward_hook(lambda *_: heads_run.append(1))
    head_before = {k: v.clone() for k, v in fast.student.mlm_head.state_dict().items()}
    body_before = fast.student.minialbert.layer.attention.query.weight.detach().clone()
    assert counted_flops(lambda: fast.step(batch)) == distillation_step_flops(
        teacher_cfg, student_cfg, 2, 16, masked / 32, teacher_logits=False, student_logits=False)
    assert distillation_step_flops(teacher_cfg, student_cfg, 2, 16, masked / 32, teacher_logits=False,
                                   student_logits=False) < distillation_step_flops(teacher_cfg, student_cfg, 2, 16, masked / 32)
    terms = fast.losses(batch)
    assert heads_run == [] and terms.mlm == 0 and terms.output == 0 and terms.hidden > 0
    for k, v in fast.student.mlm_head.state_dict().items():
        assert torch.equal(v, head_before[k]), k
    assert not torch.equal(fast.student.minialbert.layer.attention.query.weight, body_before)  # the body trained


def test_flops_reject_bad_sizes(tiny):
    teacher_cfg, student_cfg = tiny_pair(tiny)
    with pytest.raises(ValueError, match="masked_fraction"):
        distillation_step_flops(teacher_cfg, student_cfg, 2, 16, masked_fraction=1.5)


def test_measure_peak_flops_is_positive_on_cpu():
    rate = measure_peak_flops(torch.float32, "cpu", size=128, seconds=0.05, repeats=1)
    assert 1e6 < rate < 1e15


def test_peak_measurement_shrinks_its_products_for_a_dtype_the_cpu_only_emulates():
    # A run with train.peak_tflops unset measures at every start; emulated bf16 (~0.25 GFLOP/s on AVX2) must not
    # turn that into minutes: a 256-side probe taking 0.13 s leaves a side near 128 for a 0.25 s window.
    from minialbert.flops import _fitted_size
    assert _fitted_size(2048, probe_seconds=0.13, window=0.25) <= 192
    assert _fitted_size(2048, probe_seconds=1e-6, window=0.25) == 2048  # a fast unit keeps the full size
    assert _fitted_size(2048, probe_seconds=100.0, window=0.25) == 64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fast_step_on_cuda_matches_cpu_fp32(tiny):
    teacher_cfg, student_cfg = tiny_pair(tiny)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=10)
    batch = make_batch(100, batch=3, seq=16, seed=11, padded_rows=1)
    cpu = FastRecipe.build(teacher, student, torch.float32, mode="paper")
    gpu = FastRecipe.build(teacher, student, torch.float32, mode="paper", device="cuda")
    with torch.no_grad():
        want = cpu.losses(batch).total
        got = gpu.losses({k: v.cuda() for k, v in batch.items()}).total.cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_fast_step_trains_on_cuda(tiny):
    teacher_cfg, student_cfg = tiny_pair(tiny, dropout=0.1)
    teacher, student = build_models(teacher_cfg, student_cfg, seed=12)
    fast = FastRecipe.build(teacher, student, torch.bfloat16, device="cuda")
    batch = {k: v.cuda() for k, v in make_batch(100, batch=4, seq=16, seed=13).items()}
    losses = [fast.step(batch) for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert measure_peak_flops(torch.bfloat16, "cuda", size=2048, seconds=0.1, repeats=1) > 1e12
