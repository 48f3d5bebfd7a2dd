"""recomputed.py: a feed-forward block's activation output is made again in backward instead of kept, with the
same values and gradients as the plain composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import minialbert.modeling_minialbert as modeling
from minialbert.recomputed import recomputed_activation

pytestmark = pytest.mark.usefixtures("one_thread")


class Counted:
    """GELU that counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.nn.functional.gelu(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_equal_the_plain_block_and_the_activation_runs_again_in_backward(dtype):
    torch.manual_seed(0)
    w1, w2 = nn.Linear(16, 64).to(dtype), nn.Linear(64, 16).to(dtype)
    low_rank = nn.Sequential(nn.Linear(64, 4, bias=False), nn.Linear(4, 16, bias=False)).to(dtype)

    def consumer(a):  # a linear plus a low-rank delta on the same input, as a recursion's ffn_output is
        return w2(a) + low_rank(a)

    x = torch.randn(3, 5, 16, dtype=dtype)
    results = []
    for recompute in (False, True):
        for p in (*w1.parameters(), *w2.parameters(), *low_rank.parameters()):
            p.grad = None
        xi = x.clone().requires_grad_()
        act = Counted()
        out = recomputed_activation(act, w1(xi), consumer) if recompute else consumer(act(w1(xi)))
        forward_calls = act.calls
        out.square().sum().backward()
        results.append((out.detach(), xi.grad, [p.grad.clone() for p in (*w1.parameters(), *w2.parameters(),
                                                                         *low_rank.parameters())]))
        assert forward_calls == 1
        assert act.calls == (2 if recompute else 1)  # w2 and the delta share one saved input: one more pass at most
    (out_a, gx_a, gp_a), (out_b, gx_b, gp_b) = results
    assert torch.equal(out_a, out_b) and torch.equal(gx_a, gx_b)
    assert all(torch.equal(a, b) for a, b in zip(gp_a, gp_b))


def test_without_grad_it_is_the_plain_composition():
    act = Counted()
    with torch.no_grad():
        out = recomputed_activation(act, torch.randn(4, 8, requires_grad=True), lambda a: a * 2)
    assert act.calls == 1 and out.grad_fn is None


def test_a_student_training_step_is_unchanged(monkeypatch):
    """The MiniAlbert student (its feed-forward blocks use it) trains exactly as with the plain composition."""
    from minialbert.configuration_minialbert import MiniAlbertConfig
    from minialbert.modeling_minialbert import MiniAlbertForMaskedLM

    cfg = MiniAlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_attention_heads=4,
                           intermediate_size=64, num_recursions=2, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, recursion_delta_rank=2)
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(cfg)
    ids = torch.randint(0, 100, (2, 12))

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fast = grads()
    monkeypatch.setattr(modeling, "recomputed_activation", lambda act, pre, consumer: consumer(act(pre)))
    plain = grads()
    assert len(fast) == len(plain) and all(torch.equal(a, b) for a, b in zip(fast, plain))
