"""The maps-free attention KL (minialbert/attention_kl.py): exact against the materialised maps, gradients by
gradcheck, and a training step that makes no (L, L) tensor at L 512 and 1024."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import minialbert.attention_kl as akl
import minialbert.blockwise_attention as blockwise
from minialbert.attention_kl import TeacherAttention, _attend_chunked, attend, fused_attention_kl, key_bias
from minialbert.losses import maps_attention_kl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from distill_recipes import FastRecipe, build_models, make_batch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def maps(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, log: bool = False) -> torch.Tensor:
    """(B, heads, L, L) probabilities (or their logs) as the models' eager attention computes them."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores + (~mask[:, None, None, :].bool()).to(scores.dtype) * torch.finfo(scores.dtype).min
    return scores.log_softmax(-1) if log else scores.softmax(-1)


def heads(b: int, h: int, seq: int, d: int, dtype: torch.dtype, seed: int, spread: float = 1.0):
    """Student q, k (requiring grad) and teacher q, k, (B, h, L, d); ``spread`` scales the scores' range."""
    g = torch.Generator().manual_seed(seed)
    q_s, k_s, q_t, k_t = (torch.randn(b, h, seq, d, generator=g, dtype=torch.float64) * spread for _ in range(4))
    return q_s.to(dtype).requires_grad_(), k_s.to(dtype).requires_grad_(), q_t.to(dtype), k_t.to(dtype)


def padded_mask(b: int, seq: int) -> torch.Tensor:
    """Row 0 full, row 1 half padded, the last row all padding (no real key at all: a fully masked row)."""
    mask = torch.ones(b, seq, dtype=torch.long)
    mask[1, seq // 2 + 1:] = 0
    mask[-1] = 0
    return mask


METHODS = pytest.mark.parametrize("method", ["blockwise", "attention", "scores"])


@METHODS
@pytest.mark.parametrize("mode", ["default", "paper"])
def test_gradcheck_fp64_with_padding_and_fully_masked_rows(mode, method, monkeypatch):
    monkeypatch.setattr(akl, "BLOCK_ELEMENTS", 3 * 2 * 7 * 3)  # blockwise: 3 query rows per block; scores: 2, 4 blocks
    q_s, k_s, q_t, k_t = heads(3, 2, 7, 4, torch.float64, seed=0)
    mask = padded_mask(3, 7)
    teacher = TeacherAttention(q_t, k_t)
    def term(q, k):
        return fused_attention_kl(q, k, teacher, mask, mode, method=method)

    assert torch.autograd.gradcheck(term, (q_s, k_s))
    value = fused_attention_kl(q_s, k_s, teacher, mask, mode, method=method)
    grads = torch.autograd.grad(value, (q_s, k_s))
    assert torch.isfinite(value) and all(torch.isfinite(g).all() for g in grads)
    # padded query rows and padded keys get no gradient, and the all-padding row none at all
    assert grads[0][1, :, 4:].abs().max() == 0 and grads[1][1, :, 4:].abs().max() == 0
    assert grads[0][2].abs().max() == 0 and grads[1][2].abs().max() == 0


@METHODS
@pytest.mark.parametrize("mode", ["default", "paper"])
def test_fp64_value_and_gradients_equal_the_materialised_kl(mode, method):
    q_s, k_s, q_t, k_t = heads(3, 2, 9, 4, torch.float64, seed=1)
    mask = padded_mask(3, 9)
    fused = fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, mode, method=method)
    # The reference in fp64 too (it upcasts to fp32 only when given lower precision).
    log_s, t = maps(q_s, k_s, mask, log=True), maps(q_t, k_t, mask)
    rows = mask.double()[:, None, :]
    row_kl = (torch.xlogy(t, t) - t * log_s).sum(-1)  # exact KL, no EPS (t is exactly 0 on padded keys)
    want = (row_kl * rows).sum() / (2 * rows.sum() * (9 if mode == "paper" else 1))
    torch.testing.assert_close(fused, want, rtol=1e-12, atol=1e-14)
    got_g = torch.autograd.grad(fused, (q_s, k_s))
    want_g = torch.autograd.grad(want, (q_s, k_s))
    for got, exp in zip(got_g, want_g):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-13)


@METHODS
@pytest.mark.parametrize("mode", ["default", "paper"])
def test_fp32_at_a_real_shape_matches_losses_maps_attention_kl(mode, method):
    """b2, 12 heads, d 64, L 256, a padded row: value and gradients against the maps-based term (with its EPS)."""
    q_s, k_s, q_t, k_t = heads(2, 12, 256, 64, torch.float32, seed=2, spread=0.7)
    mask = torch.ones(2, 256, dtype=torch.long)
    mask[1, 200:] = 0
    fused = fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, mode, method=method)
    ref = maps_attention_kl(maps(q_s, k_s, mask), maps(q_t, k_t, mask), mask, mode)
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=0)
    for got, exp in zip(torch.autograd.grad(fused, (q_s, k_s)), torch.autograd.grad(ref, (q_s, k_s))):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-4 * exp.abs().max().item())


@METHODS
def test_bf16_inputs_stay_within_the_materialised_bf16_error(method):
    """bf16 queries/keys (the models in bf16): both paths against the exact fp64 KL of the same bf16 inputs."""
    q_s, k_s, q_t, k_t = heads(2, 12, 256, 64, torch.bfloat16, seed=3, spread=0.7)
    mask = torch.ones(2, 256, dtype=torch.long)
    exact = fused_attention_kl(q_s.double(), k_s.double(), TeacherAttention(q_t.double(), k_t.double()),
                               mask, "default")
    fused = fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, "default", method=method)
    materialised = maps_attention_kl(maps(q_s, k_s, mask), maps(q_t, k_t, mask), mask, "default")  # bf16 maps
    assert fused.dtype == torch.float32
    if method == "scores":  # bf16 q·k products (one rounding each, as the models' attention has them), fp32 rows
        assert abs(fused.double() - exact) <= 1e-4 * exact
    else:  # these routes upcast q, k: fp32-exact, and closer than the models' own bf16 maps
        assert abs(fused.double() - exact) <= 1e-5 * exact
        assert abs(fused.double() - exact) <= abs(materialised.double() - exact)
    exact_grads = torch.autograd.grad(exact, (q_s, k_s))
    for got, want in zip(torch.autograd.grad(fused, (q_s, k_s)), exact_grads):
        assert (got.double() - want).abs().max() <= 2e-2 * want.abs().max()


def test_the_blockwise_fallback_equals_the_cpu_flash_kernel():
    """The attention used where no fused kernel takes a bias (and its LSE): the same numbers, key bias included."""
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(2, 3, 600, 16, generator=g) for _ in range(3))
    bias, _ = key_bias(padded_mask(2, 600)[:1].expand(2, 600), torch.float32)
    bias = bias + torch.randn(2, 3, 1, 600, generator=g)  # the swapped calls' per-key -LSE bias
    out, lse = attend(q, k, v, bias, 0.25)
    out_c, lse_c = _attend_chunked(q, k, v, bias, 0.25)
    torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse_c, lse, rtol=1e-5, atol=1e-5)


# ----- the training step ------------------------------------------------------------------------------------------
def tiny_models(tiny, seq: int, dropout: float = 0.0, seed: int = 0):
    from transformers import BertConfig

    teacher_cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=seq, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)
    student_cfg = tiny(max_position_embeddings=seq, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return build_models(teacher_cfg, student_cfg, seed=seed)


@pytest.mark.parametrize("mode", ["default", "paper"])
def test_fused_and_materialised_steps_have_the_same_losses_and_gradients(tiny, mode):
    teacher, student = tiny_models(tiny, 64, seed=5)
    with torch.no_grad():  # peaked maps (random weights give nearly uniform ones, and a KL of ~1e-4)
        student.minialbert.layer.attention.query.weight.mul_(8)
        for layer in teacher.bert.encoder.layer:
            layer.attention.self.query.weight.mul_(8)
    batch = make_batch(100, batch=3, seq=24, seed=6, padded_rows=1)
    runs = {}
    for kind in ("fused", "materialised"):
        recipe = FastRecipe.build(teacher, student, torch.float32, mode=mode, attention_kl=kind)
        terms = recipe.losses(batch)
        terms.total.backward()
        runs[kind] = terms, [p.grad for p in recipe.student.parameters()]
    (fused, g_fused), (ref, g_ref) = runs["fused"], runs["materialised"]
    # Both fp32 paths carry ~1e-8 of rounding per row KL (H(t, s) - H(t) here, log t - log s per element there).
    for name in ("total", "attention", "hidden", "mlm", "output", "attention_per_recursion"):
        torch.testing.assert_close(getattr(fused, name), getattr(ref, name), rtol=1e-5, atol=1e-8, msg=name)
    assert fused.attention > (1e-2 if mode == "default" else 1e-2 / 24)  # live: the comparison means something
    for got, want in zip(g_fused, g_ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (forward, backward and optimizer alike)."""

    def __init__(self):
        super().__init__()
        self.numel, self.shape, self.op = 0, None, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.shape, self.op = t.numel(), tuple(t.shape), str(func)
        return out


@pytest.mark.parametrize("seq", [512, 1024])
def test_training_steps_at_long_sequences_make_no_seq_by_seq_tensor(tiny, seq, monkeypatch):
    """Three fp32 training steps of the maps-free path at L 512 / 1024 (tiny models, b2, the student's attention
    dropout 0.1 as in the paper): no op returns a tensor of L² elements or more (one (B, heads, L, L) map has
    8 L²), and the loss falls; the materialised path, watched the same way, does make maps — so the watch can
    see them. The blocks of the CPU dropout attention and of the blockwise KL are capped at 32 query rows: at
    these tiny widths their default blocks (2**24 and 2**22 scores) would hold every row at once."""
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 2 * 4 * 32 * seq)
    monkeypatch.setattr(akl, "BLOCK_ELEMENTS", 2 * 4 * 32 * seq)
    teacher, student = tiny_models(tiny, seq, dropout=0.1, seed=7)
    batch = make_batch(100, batch=2, seq=seq, seed=8, padded_rows=1)
    fused = FastRecipe.build(teacher, student, torch.float32, attention_kl="fused")
    with LargestTensor() as watch:
        losses = [fused.step(batch) for _ in range(3)]
    assert watch.numel < seq * seq, (watch.shape, watch.op)
    assert losses[-1] < losses[0]
    maps_path = FastRecipe.build(teacher, student, torch.float32, attention_kl="materialised")
    with LargestTensor() as watch_maps, torch.no_grad():
        maps_path.losses(batch)
    assert watch_maps.numel >= 2 * 4 * seq * seq, watch_maps.shape  # (B, heads, L, L), maybe as (B·heads, L, L)


def test_run_config_flag():
    from minialbert.config import ConfigError, load_run_config

    assert load_run_config().loss.attention_kl == "fused"
    assert load_run_config(None, ["loss.attention_kl=materialised"]).loss.attention_kl == "materialised"
    with pytest.raises(ConfigError, match="loss.attention_kl"):
        load_run_config(None, ["loss.attention_kl=maps"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernel_path_equals_the_cpu_fp64_term(dtype, monkeypatch):
    """On CUDA the attention calls go through the memory-efficient kernel (bias + LSE), not the blockwise
    fallback; L 300 is not a multiple of 16 (the kernel's bias alignment)."""
    import minialbert.attention_kl as akl

    def no_fallback(*args):
        raise AssertionError("the blockwise fallback ran on CUDA")

    monkeypatch.setattr(akl, "_attend_chunked", no_fallback)
    # fp64 reference of the very values the GPU gets (rounded to ``dtype``); the term computes in fp32 on both.
    q_s, k_s, q_t, k_t = (t.detach().to(dtype).double().requires_grad_(t.requires_grad)
                          for t in heads(2, 12, 300, 64, torch.float64, seed=9, spread=0.7))
    mask = torch.ones(2, 300, dtype=torch.long)
    mask[1, 220:] = 0
    want = fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, "default")
    want_g = torch.autograd.grad(want, (q_s, k_s))
    cuda = [t.detach().to("cuda", dtype).requires_grad_(t.requires_grad) for t in (q_s, k_s, q_t, k_t)]
    got = fused_attention_kl(cuda[0], cuda[1], TeacherAttention(cuda[2], cuda[3]), mask.cuda(), "default")
    got_g = torch.autograd.grad(got, cuda[:2])
    torch.testing.assert_close(got.double().cpu(), want, rtol=1e-5, atol=0)
    for g, w in zip(got_g, want_g):  # bf16 gradients are rounded to bf16 on the way out
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(g.double().cpu(), w, rtol=tol, atol=tol * w.abs().max().item())


def _peak_rss_growth(fn) -> int:
    """Bytes the process's peak RSS rises above its current RSS while ``fn()`` runs (Linux)."""
    status = Path("/proc/self/status")

    def field(name: str) -> int:
        return next(int(line.split()[1]) * 1024 for line in status.read_text().splitlines() if line.startswith(name))

    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    base = field("VmRSS:")
    fn()
    return field("VmHWM:") - base


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc peak-RSS reset")
def test_the_term_forward_and_backward_stay_far_below_one_map_of_memory():
    """Kernels can materialise internally what no op returns (the CPU flash kernel expands a strided mask to a
    full (B, heads, L, L) copy): b2, 4 heads, d 16, L 2048 — one fp32 map is 128 MiB, the (B, heads, L, d) tensors
    the term keeps 1 MiB each. Peak RSS growth of forward + backward must stay under half a map."""
    q_s, k_s, q_t, k_t = heads(2, 4, 2048, 16, torch.float32, seed=10)
    mask = torch.ones(2, 2048, dtype=torch.long)
    mask[1, 1500:] = 0
    one_map = 2 * 4 * 2048 * 2048 * 4

    def step():
        fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, "default").backward()

    step()  # warm-up: the allocator's first growth
    assert _peak_rss_growth(step) < one_map / 2


@pytest.mark.parametrize("method, fp32_kept", [("attention", 1), ("scores", 0)])
def test_a_bf16_step_keeps_no_fp32_copy_of_the_queries_and_keys_for_backward(method, fp32_kept):
    """At L 512 the fp32 copies of both models' queries and keys (four (B, heads, L, d) per recursion, plus the two
    attention outputs) were the largest thing a bf16 step kept for backward; the attention route keeps its bf16
    inputs and one fp32 (B, heads, L, d) tensor, and makes the fp32 copies again in backward; the scores route
    keeps its bf16 inputs alone."""
    q_s, k_s, q_t, k_t = heads(2, 4, 128, 16, torch.bfloat16, seed=11)
    mask = padded_mask(2, 128)
    fp32_bytes = fp32_kept * q_s.numel() * 4
    saved: list[torch.Tensor] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        loss = fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, "default", method=method)
    fp32_heads = [t for t in saved if t.dtype == torch.float32 and t.shape == q_s.shape]
    assert sum(t.numel() * 4 for t in fp32_heads) == fp32_bytes, [tuple(t.shape) for t in fp32_heads]
    assert {t.data_ptr() for t in (q_s, k_s, q_t, k_t)} <= {t.data_ptr() for t in saved}
    loss.backward()
    assert torch.isfinite(q_s.grad).all() and torch.isfinite(k_s.grad).all() and q_s.grad.abs().sum() > 0
