"""The sentence-embedding term: 1 - cosine of the mean-pooled last recursion and last mapped teacher layer."""

from __future__ import annotations

import torch

from minialbert.losses import distillation_losses, sentence_cosine


def _hidden(b=3, l=7, h=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return torch.randn(b, l, h, generator=g), torch.randn(b, l, h, generator=g), mask


def test_it_is_one_minus_the_cosine_of_mean_pooled_real_tokens():
    s, t, mask = _hidden()
    expected = []
    for i in range(3):
        n = int(mask[i].sum())
        expected.append(1 - torch.nn.functional.cosine_similarity(s[i, :n].mean(0), t[i, :n].mean(0), dim=0))
    torch.testing.assert_close(sentence_cosine(s, t, mask), torch.stack(expected).mean())
    s2 = s.clone()
    s2[mask == 0] = 1e3  # padding never enters
    torch.testing.assert_close(sentence_cosine(s2, t, mask), sentence_cosine(s, t, mask))


def _losses(weight: float, student_last: torch.Tensor):
    s, t, mask = _hidden()
    maps = torch.softmax(torch.randn(3, 2, 7, 7, generator=torch.Generator().manual_seed(1)), -1)
    return distillation_losses(
        student_hidden=[s, student_last], student_attentions=[maps, maps], student_logits=None,
        teacher_hidden=[t, t * 2 + 1], teacher_attentions=[maps, maps], teacher_logits=None, attention_mask=mask,
        masked_labels=torch.zeros(0, dtype=torch.long),
        weights={"mlm": 1.0, "attention": 3.0, "hidden": 3.0, "output": 5.0, "sentence": weight})


def test_the_term_is_off_at_weight_0_and_adds_its_weighted_value_otherwise():
    last = _hidden(seed=2)[0].requires_grad_()
    off, on = _losses(0.0, last), _losses(2.0, last)
    assert off.sentence == 0 and on.sentence > 0
    torch.testing.assert_close(on.total, off.total + 2.0 * on.sentence)
    _, t, mask = _hidden()
    torch.testing.assert_close(on.sentence, sentence_cosine(last, t * 2 + 1, mask))  # the last mapped layer
    grad_on = torch.autograd.grad(on.total, last)[0]
    grad_off = torch.autograd.grad(_losses(0.0, last).total, last)[0]
    assert not torch.allclose(grad_on, grad_off)  # it trains the student
    assert len(on.scalars()) == 6 + 2 * 2  # reported with the other terms
