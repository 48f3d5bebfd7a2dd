"""The CPU dropout with cheap masks (minialbert/dropout.py): its keep-rate, scale, gradient and repeatability."""

from __future__ import annotations

import pytest
import torch

from minialbert.dropout import Dropout, drop_mask, dropout, quantised


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_masks_drop_at_rate_p_and_keep_the_expectation(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = dropout(x, p)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / 1e6) ** 0.5  # within 5 standard deviations of p
    assert abs(quantised(p) - p) <= 0.5 / 2**15
    kept = y[y != 0]
    assert torch.all(kept == 1 / (1 - quantised(p)))  # kept elements carry the scale of the realised rate
    assert abs(y.mean().item() - 1.0) < 0.01


def test_every_16_bit_draw_of_a_word_is_used_and_uniform():
    """Four mask elements from each 64-bit draw: the drop rate is p at every position of the word."""
    torch.manual_seed(1)
    m = drop_mask((1 << 20, 4), 0.25).float().mean(0)
    assert torch.allclose(m, torch.full((4,), 0.25), atol=0.003), m


def test_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 32, dtype=torch.float64, requires_grad=True)
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y != 0)
    assert torch.allclose(x.grad[x.grad != 0], torch.tensor(1 / (1 - quantised(0.3)), dtype=torch.float64))


def test_masks_repeat_under_the_same_rng_state_and_differ_otherwise():
    """A restored RNG state (what a resume does) draws the same masks; the next draw is a new one."""
    x = torch.ones(256, 256, dtype=torch.bfloat16)
    torch.manual_seed(3)
    a, b = dropout(x, 0.1), dropout(x, 0.1)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.1), a) and not torch.equal(a, b)


def test_the_module_is_an_nn_dropout_and_is_identity_in_eval():
    module = Dropout(0.1)
    assert isinstance(module, torch.nn.Dropout)
    x = torch.randn(8, 8)
    assert torch.equal(module.eval()(x), x)
    assert not torch.equal(module.train()(x), x)
