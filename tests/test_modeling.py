"""The student: attention paths, heads, Auto classes, adapter tuning."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForMaskedLM, BertConfig, BertModel

from minialbert import (
    MiniAlbertConfig,
    MiniAlbertForMaskedLM,
    MiniAlbertForSequenceClassification,
    MiniAlbertForTokenClassification,
    MiniAlbertModel,
)


def _batch(vocab=100, b=3, l=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (b, l), generator=g)
    mask = torch.ones(b, l, dtype=torch.long)
    mask[1, 8:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("use_adapters", [True, False])
def test_sdpa_and_eager_paths_agree(tiny, use_adapters):
    torch.manual_seed(0)
    model = MiniAlbertModel(tiny(use_adapters=use_adapters, initializer_range=0.2)).eval()
    ids, mask = _batch()
    eager = model(ids, mask, output_attentions=True, output_hidden_states=True)
    sdpa = model(ids, mask, output_hidden_states=True)
    assert sdpa.attentions is None and len(eager.attentions) == 2
    for e, s in zip(eager.hidden_states, sdpa.hidden_states):
        torch.testing.assert_close(e, s, rtol=1e-5, atol=1e-5)
    # Attention probabilities: rows sum to one, padded keys get nothing.
    probs = eager.attentions[0]  # (B, heads, L, L)
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)))
    assert probs[2, :, :, 4:].abs().max() == 0


def test_hidden_states_are_projection_then_one_per_recursion(tiny):
    model = MiniAlbertModel(tiny(num_recursions=3)).eval()
    ids, mask = _batch()
    out = model(ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (3, 12, 32) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)


def test_mlm_head_scores_only_chosen_positions(tiny):
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(tiny()).eval()
    ids, mask = _batch()
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5], labels[2, 1] = 7, 8, 9
    positions = (labels.view(-1) != -100).nonzero().squeeze(1)
    full = model(ids, mask, labels=labels)
    part = model(ids, mask, labels=labels, logits_positions=positions)
    assert part.logits.shape == (3, 100)
    torch.testing.assert_close(part.logits, full.logits.view(-1, 100)[positions])
    torch.testing.assert_close(part.loss, full.loss)


def test_auto_classes_load_saved_models_in_a_fresh_process(tiny, tmp_path):
    torch.manual_seed(0)
    ids, mask = _batch()
    for cls in (MiniAlbertForMaskedLM, MiniAlbertForSequenceClassification, MiniAlbertForTokenClassification):
        model = cls(tiny(num_labels=3)).eval()
        model.save_pretrained(tmp_path / cls.__name__)
        torch.save(model(ids, mask).logits, tmp_path / f"{cls.__name__}.pt")
    torch.save((ids, mask), tmp_path / "batch.pt")
    script = f"""
import torch, minialbert
from pathlib import Path
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification
root = Path({str(tmp_path)!r})
ids, mask = torch.load(root / "batch.pt")
for auto, name in [(AutoModelForMaskedLM, "MiniAlbertForMaskedLM"),
                   (AutoModelForSequenceClassification, "MiniAlbertForSequenceClassification"),
                   (AutoModelForTokenClassification, "MiniAlbertForTokenClassification")]:
    model = auto.from_pretrained(root / name).eval()
    assert type(model).__name__ == name, type(model)
    torch.testing.assert_close(model(ids, mask).logits, torch.load(root / (name + ".pt")), rtol=0, atol=0)
assert (root / "MiniAlbertForMaskedLM" / "model.safetensors").is_file()
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


def _train_steps(model, steps=3):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids, mask = _batch()
    labels = torch.tensor([0, 1, 2])
    for _ in range(steps):
        opt.zero_grad()
        model(ids, mask, labels=labels).loss.backward()
        opt.step()


@pytest.mark.parametrize("had_adapters", [True, False])
def test_adapter_only_training_changes_only_adapters_and_head(tiny, had_adapters):
    torch.manual_seed(0)
    model = MiniAlbertForSequenceClassification(tiny(num_labels=3, use_adapters=had_adapters))
    counts = model.train_adapters_only()
    assert model.minialbert.adapters is not None and model.config.use_adapters
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable and all(".adapters." in n or n.startswith("classifier.") for n in trainable)
    _train_steps(model)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == trainable


def test_adapters_save_alone_and_restore_predictions_on_the_base(tiny, tmp_path):
    torch.manual_seed(0)
    base = MiniAlbertForSequenceClassification(tiny(num_labels=3, use_adapters=False, vocab_size=2000))
    base.save_pretrained(tmp_path / "base")
    tuned = MiniAlbertForSequenceClassification.from_pretrained(tmp_path / "base")
    tuned.train_adapters_only()
    _train_steps(tuned)
    weights = tuned.save_adapters(tmp_path / "adapters")
    full_size = (tmp_path / "base" / "model.safetensors").stat().st_size
    assert weights.stat().st_size < 0.1 * full_size
    restored = MiniAlbertForSequenceClassification.from_pretrained(tmp_path / "base")
    restored.load_adapters(tmp_path / "adapters")
    ids, mask = _batch(vocab=2000)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(ids, mask).logits, tuned.eval()(ids, mask).logits, rtol=0, atol=0)


def test_load_adapters_refuses_another_shape(tiny, tmp_path):
    model = MiniAlbertForSequenceClassification(tiny(num_labels=3))
    model.save_adapters(tmp_path / "a")
    other = MiniAlbertForSequenceClassification(tiny(num_labels=3, num_recursions=3))
    with pytest.raises(ValueError, match="num_recursions"):
        other.load_adapters(tmp_path / "a")


def test_embeddings_initialise_from_another_model(tiny):
    bert = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64))
    model = MiniAlbertModel(tiny())
    model.init_embeddings_from(bert.embeddings)
    torch.testing.assert_close(model.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    wide = BertModel(BertConfig(vocab_size=100, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32, max_position_embeddings=64))
    with pytest.raises(ValueError, match="word_embeddings"):
        model.init_embeddings_from(wide.embeddings)


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="num_attention_heads"):
        MiniAlbertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_recursions"):
        MiniAlbertConfig(num_recursions=0)
    with pytest.raises(ValueError, match="recursion_delta_rank"):
        MiniAlbertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, recursion_delta_rank=33)


def test_recursion_deltas_start_at_zero_and_then_give_each_recursion_its_own_weights(tiny):
    torch.manual_seed(0)
    relaxed = MiniAlbertModel(tiny(num_recursions=3, recursion_delta_rank=4)).eval()
    shared = MiniAlbertModel(tiny(num_recursions=3)).eval()
    missing, unexpected = shared.load_state_dict(relaxed.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("deltas.") for k in unexpected)
    ids, mask = _batch()
    torch.testing.assert_close(relaxed(ids, mask).last_hidden_state, shared(ids, mask).last_hidden_state,
                               rtol=0, atol=0)
    with torch.no_grad():  # recursion 2's delta alone: recursions 0-1 unchanged, the output changed
        relaxed.deltas[2].ffn_output.up.normal_()
        relaxed.deltas[2].ffn_norm.bias.fill_(0.5)
    a = relaxed(ids, mask, output_hidden_states=True).hidden_states
    b = shared(ids, mask, output_hidden_states=True).hidden_states
    torch.testing.assert_close(a[2], b[2], rtol=0, atol=0)
    assert (a[3] - b[3]).abs().max() > 0.1


def test_from_pretrained_of_a_saved_mlm_model_is_exact(tiny, tmp_path):
    model = MiniAlbertForMaskedLM(tiny()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_mean_pooling_head_reads_the_real_tokens_mean(tiny):
    """classifier_pooling 'mean' (a sentence-embedding teacher's pooling): the head sees the mean of the last
    recursion over real tokens — so padding a sentence leaves its logits alone — where 'cls' reads position 0."""
    torch.manual_seed(0)
    model = MiniAlbertForSequenceClassification(tiny(num_labels=3, classifier_pooling="mean")).eval()
    ids, mask = _batch()
    hidden = model.minialbert(ids, mask).last_hidden_state
    m = mask[..., None].float()
    expected = model.classifier((hidden * m).sum(1) / m.sum(1))
    torch.testing.assert_close(model(ids, mask).logits, expected)
    alone = model(ids[2:, :4], mask[2:, :4]).logits  # row 2 has 4 real tokens
    torch.testing.assert_close(model(ids, mask).logits[2:], alone, atol=1e-5, rtol=1e-5)
    model.config.classifier_pooling = "cls"
    torch.testing.assert_close(model(ids, mask).logits, model.classifier(hidden[:, 0]))
    with pytest.raises(ValueError, match="classifier_pooling must be one of cls, mean, got 'max'"):
        tiny(classifier_pooling="max")
