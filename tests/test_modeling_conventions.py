"""The Hugging Face conventions of the student classes, as a user meets them (transformers' own common tests
run in test_hf_common.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForMaskedLM

from minialbert import MiniAlbertForMaskedLM, MiniAlbertModel
from tiny_models import tiny_config


def inputs(batch=2, length=9, vocab=100):
    torch.manual_seed(0)
    ids = torch.randint(5, vocab, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def test_resize_token_embeddings_resizes_the_mlm_decoder_and_its_bias():
    model = MiniAlbertForMaskedLM(tiny_config()).eval()
    ids, mask = inputs()
    before = model(ids, mask).logits
    model.resize_token_embeddings(120)
    assert model.mlm_head.decoder.weight.shape == (120, 32) and model.mlm_head.decoder.bias.shape == (120,)
    after = model(ids, mask).logits
    assert after.shape[-1] == 120 and model.config.vocab_size == 120
    torch.testing.assert_close(after[..., :100], before)  # the old rows are kept


def test_eager_and_sdpa_give_the_same_outputs_and_are_reported(tmp_path):
    MiniAlbertForMaskedLM(tiny_config()).save_pretrained(tmp_path)
    ids, mask = inputs()
    outputs = {}
    for implementation in ("eager", "sdpa"):
        model = AutoModelForMaskedLM.from_pretrained(tmp_path, attn_implementation=implementation).eval()
        assert model.config._attn_implementation == implementation
        outputs[implementation] = model(ids, mask).logits
    torch.testing.assert_close(outputs["eager"], outputs["sdpa"], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    ids, mask = inputs()
    grads = {}
    for checkpointing in (False, True):
        torch.manual_seed(1)
        model = MiniAlbertForMaskedLM(tiny_config()).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(ids, mask, labels=ids).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters()}
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, msg=name)


def test_config_flags_inputs_embeds_and_return_dict():
    model = MiniAlbertModel(tiny_config(output_hidden_states=True, output_attentions=True)).eval()
    ids, mask = inputs()
    out = model(ids, mask)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2  # embeddings + 2 recursions; 2 maps
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state, out.last_hidden_state)
    as_tuple = model(ids, mask, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.last_hidden_state)


def test_unknown_arguments_are_refused_not_ignored():
    model = MiniAlbertModel(tiny_config()).eval()
    ids, mask = inputs()
    with pytest.raises(TypeError, match="head_mask"):
        model(ids, mask, head_mask=torch.ones(2))
