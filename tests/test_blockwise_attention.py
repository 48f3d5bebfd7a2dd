"""The CPU attention with dropout that keeps no (L, L) tensor (minialbert/blockwise_attention.py)."""

from __future__ import annotations

import math

import pytest
import torch

import minialbert.blockwise_attention as blockwise
from minialbert.blockwise_attention import blockwise_attention

pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(b=2, h=3, seq=10, d=4, dtype=torch.float64, seed=0):
    """Non-contiguous (B, heads, L, d) heads, as the model's transposed projections are; row 1 half padded."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, seq, h, d, generator=g, dtype=dtype).transpose(1, 2).requires_grad_() for _ in range(3))
    bias = torch.zeros(b, 1, 1, seq, dtype=dtype)
    bias[1, ..., seq // 2 + 1:] = torch.finfo(dtype).min
    return q, k, v, bias


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(blockwise, "BLOCK_ELEMENTS", 2 * 3 * 10 * 3)  # 3 query rows per block: 4 blocks


def test_without_dropout_equals_eager_attention(small_blocks):
    q, k, v, bias = inputs()
    want = ((q @ k.transpose(-1, -2) / math.sqrt(4) + bias).softmax(-1)) @ v
    got = blockwise_attention(q, k, v, bias, 0.0)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(want)
    got_grads = torch.autograd.grad((got * weights).sum(), (q, k, v))
    for a, b in zip(got_grads, torch.autograd.grad((want * weights).sum(), (q, k, v))):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kept_bytes", [0, 1 << 20])  # masks regenerated from the seed in backward / kept
def test_gradcheck_with_dropout_and_its_mask_is_regenerated_exactly(small_blocks, monkeypatch, kept_bytes):
    monkeypatch.setattr(blockwise, "KEPT_MASK_BYTES", kept_bytes)
    q, k, v, bias = inputs()

    def attention(q, k, v):  # a fixed seed: the same masks on every call, so the function is deterministic
        return blockwise._BlockwiseAttention.apply(q, k, v.reshape(6, 10, 4), bias, 0.3, 1234, 3)

    assert torch.autograd.gradcheck(attention, (q, k, v))
    assert torch.equal(attention(q, k, v), attention(q, k, v))


def test_dropout_drops_at_rate_p_and_keeps_the_expectation():
    """Uniform attention over 512 keys with one-hot values: each output entry is keep/(1 - p)/512."""
    torch.manual_seed(0)
    seq = 512
    q = torch.zeros(4, 2, seq, 8)
    v = torch.eye(seq)[None, None].expand(4, 2, seq, seq)
    out = blockwise_attention(q, q, v, None, 0.1) * seq  # (4, 2, L, L) entries 0 or 1/(1 - p)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - 0.1) < 0.003  # 2 M draws: 5 standard deviations
    assert out.mean().item() == pytest.approx(1.0, abs=0.003)
    torch.manual_seed(0)
    assert torch.equal(blockwise_attention(q, q, v, None, 0.1) * seq, out)  # torch.manual_seed repeats it


def test_model_uses_it_for_training_with_dropout_on_cpu(tiny, monkeypatch):
    from minialbert import MiniAlbertForMaskedLM

    calls = []
    monkeypatch.setattr("minialbert.modeling_minialbert.blockwise_attention",
                        lambda *a, **kw: calls.append(1) or blockwise_attention(*a, **kw))
    model = MiniAlbertForMaskedLM(tiny(attention_probs_dropout_prob=0.1)).train()
    ids = torch.randint(5, 100, (2, 12))
    model(ids, torch.ones_like(ids)).logits.sum().backward()
    assert len(calls) == model.config.num_recursions
    model.eval()(ids, torch.ones_like(ids))
    assert len(calls) == model.config.num_recursions  # eval: SDPA, no dropout


def test_bf16_training_at_short_lengths_runs_blockwise_with_sdpas_losses_and_gradients(tiny, monkeypatch):
    """No dropout, bf16, training, L <= 256: the blockwise kernel (CPU flash attention's bf16 backward is the slow
    one there); fp32, inference and longer sequences keep SDPA. Same loss and gradients as SDPA's to bf16 rounding."""
    import minialbert.modeling_minialbert as modeling
    from minialbert import MiniAlbertForMaskedLM

    calls = []
    monkeypatch.setattr(modeling, "blockwise_attention",
                        lambda *a, **kw: calls.append(a[0].shape[2]) or blockwise_attention(*a, **kw))
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(tiny(attention_probs_dropout_prob=0.0, max_position_embeddings=512)).train()
    ids = torch.randint(5, 100, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0

    def loss_and_grads(m):
        m.zero_grad()
        loss = m(ids, mask, labels=ids).loss
        loss.backward()
        return loss.detach().float(), [p.grad.float() for p in m.parameters() if p.grad is not None]

    bf16 = model.to(torch.bfloat16)
    blockwise_run = loss_and_grads(bf16)
    assert calls == [40] * model.config.num_recursions
    with monkeypatch.context() as m:
        m.setattr(modeling, "_blockwise_on_cpu", lambda *_: False)
        sdpa_run = loss_and_grads(bf16)
    torch.testing.assert_close(blockwise_run[0], sdpa_run[0], rtol=2e-2, atol=0)
    for a, b in zip(blockwise_run[1], sdpa_run[1]):
        torch.testing.assert_close(a, b, rtol=0.1, atol=0.05 * b.abs().max().item() + 1e-6)
    calls.clear()
    with torch.no_grad():
        bf16(ids, mask)
    bf16(torch.randint(5, 100, (1, 300)))  # longer than BLOCKWISE_BF16_MAX_LEN: flash
    model.float()(ids, mask, labels=ids).loss.backward()  # fp32: flash
    assert calls == []


def test_flops_are_those_of_a_flash_kernel(small_blocks):
    """Forward QKᵀ and PV; backward the recomputed QKᵀ and four products: 3.5 attention forwards in all, as
    minialbert.flops counts the student's attention (and torch.utils.flop_counter sees every product)."""
    from torch.utils.flop_counter import FlopCounterMode

    q, k, v, bias = inputs(dtype=torch.float32)
    with FlopCounterMode(display=False) as counter:
        blockwise_attention(q, k, v, bias, 0.1).sum().backward()
    assert counter.get_total_flops() == 3.5 * (4 * 2 * 3 * 10 * 10 * 4)
