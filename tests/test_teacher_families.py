"""Every teacher family against Hugging Face's own forward, and its attention term against the materialised one.

Tiny random teachers (``family_teachers``) with real tokenizers, one padded batch of real text; the reference for
each family is the model's own eager forward (``output_hidden_states``, ``output_attentions``) and
``losses.maps_attention_kl`` on materialised maps.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer

from distill_helpers import REPO
from family_teachers import FAMILIES, WINDOW, build_family_teacher
from minialbert.attention_kl import fused_attention_kl
from minialbert.losses import maps_attention_kl
from minialbert.teacher import TeacherError, describe_family, load_teacher
from minialbert.teacher_families import FAMILIES as TABLE
from minialbert.teacher_families import family_of, max_positions

pytestmark = pytest.mark.usefixtures("one_thread")
TEXTS = ["the heart pumps blood through the body of an animal", "a small dog barked", "green leaves of a tree"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {f: build_family_teacher(f, root / f) for f in FAMILIES}


def batch(folder):
    enc = AutoTokenizer.from_pretrained(folder)(TEXTS, padding=True, return_tensors="pt")
    assert enc["attention_mask"].min() == 0  # padded rows: masking is exercised
    return enc["input_ids"], enc["attention_mask"]


def reference(folder, family, ids, mask):
    """The model's own eager forward: hidden states, attention maps and (masked LM) logits."""
    head = family != "electra"
    model = (AutoModelForMaskedLM if head else AutoModel).from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_runs_as_its_own_forward(folders, family):
    folder = folders[family]
    ids, mask = batch(folder)
    teacher = load_teacher(folder, num_recursions=2)  # layers 2 and 4 (ModernBERT: a local and a global one)
    assert teacher.family is family_of(teacher.config) and teacher.has_mlm_head == (family != "electra")
    positions = mask.reshape(-1).nonzero().squeeze(1)[:5]
    out = teacher(ids, mask, torch.zeros_like(ids), logits_positions=positions, output_attentions=True)
    ref = reference(folder, family, ids, mask)
    real = mask.bool()
    for got, i in zip(out.hidden_states, teacher.layer_map):  # compared at real tokens (padding differs by path)
        torch.testing.assert_close(got[real], ref.hidden_states[i][real], rtol=1e-4, atol=1e-5)
    for got, i in zip(out.attentions, teacher.layer_map):
        rows = real[:, None, :, None]
        torch.testing.assert_close(got * rows, ref.attentions[i - 1] * rows, rtol=1e-4, atol=1e-6)
    if teacher.has_mlm_head:
        torch.testing.assert_close(out.logits, ref.logits.reshape(-1, ref.logits.shape[-1])[positions],
                                   rtol=1e-4, atol=1e-5)
    else:
        assert out.logits is None


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_attention_term_equals_the_materialised_one(folders, family):
    folder = folders[family]
    ids, mask = batch(folder)
    teacher = load_teacher(folder, num_recursions=2).double()
    maps = teacher(ids, mask, output_attentions=True).attentions
    fused = teacher(ids, mask, output_attentions=False, output_query_key=True).query_keys
    assert len(fused) == 2
    if family == "modernbert":
        assert [qk.window for qk in fused] == [WINDOW, None]  # layer 2 local, layer 4 global
    if family == "deberta-v2":
        assert all(qk.probs is not None and qk.query is None for qk in fused)
    else:
        assert all(qk.probs is None and qk.query is not None for qk in fused)
    b, seq = ids.shape
    g = torch.Generator().manual_seed(0)
    for t_map, t_qk in zip(maps, fused):
        q = (torch.randn(b, 4, seq, 8, generator=g, dtype=torch.float64)).requires_grad_()
        k = (torch.randn(b, 4, seq, 8, generator=g, dtype=torch.float64)).requires_grad_()
        got = fused_attention_kl(q, k, t_qk, mask, "default")
        (d_q, d_k) = torch.autograd.grad(got, (q, k))
        scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
        want = maps_attention_kl(scores.softmax(-1), t_map, mask, "default")
        (w_q, w_k) = torch.autograd.grad(want, (q, k))
        assert want > 0.1  # live: peaked student rows against the teacher's
        # The reference computes in fp32 (it upcasts maps to float) and adds EPS inside its logs.
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(d_q, w_q.double(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(d_k, w_k.double(), rtol=1e-4, atol=1e-7)


def test_families_say_what_a_weight_copying_init_and_the_student_need(folders):
    from transformers import AutoConfig

    from minialbert.teacher_families import copy_init_refusal

    configs = {f: AutoConfig.from_pretrained(folders[f]) for f in FAMILIES}
    bert_shaped = {f for f in FAMILIES if family_of(configs[f]).student_form == "bert"}
    assert bert_shaped == {"bert", "roberta", "xlm-roberta", "electra"}
    assert {f for f in FAMILIES if copy_init_refusal(configs[f]) is None} == bert_shaped
    assert copy_init_refusal(configs["modernbert"], "modernbert") is None
    assert copy_init_refusal(configs["modernbert"]).startswith(
        "teacher init is not available for a bert-form student of family ModernBERT")
    assert copy_init_refusal(configs["deberta-v2"], "deberta") is None
    roberta = AutoConfig.from_pretrained(folders["roberta"])
    assert max_positions(roberta) == 64 and roberta.max_position_embeddings == 64 + roberta.pad_token_id + 1
    lines = {f: describe_family(family_of(AutoConfig.from_pretrained(folders[f])), f) for f in FAMILIES}
    assert "RoBERTa" in lines["roberta"] and "fused" in lines["roberta"]
    assert "own attention probabilities" in lines["deberta-v2"] and "rotary" in lines["modernbert"]


@pytest.mark.parametrize("config", [
    {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 100},
    {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 100},
    {"model_type": "t5", "num_layers": 2, "d_model": 32, "num_heads": 4, "vocab_size": 100},
])
def test_decoders_are_refused_in_one_line_naming_the_accepted_families(tmp_path, config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(TeacherError) as err:
        load_teacher(tmp_path, num_recursions=2)
    message = str(err.value)
    assert "\n" not in message and f"model_type={config['model_type']!r}" in message
    assert "bert, roberta, xlm-roberta, electra, deberta-v2, modernbert" in message


def test_a_model_type_transformers_does_not_know_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nonesuch"}))
    with pytest.raises(TeacherError, match=r"config.json: not a config transformers knows") as err:
        load_teacher(tmp_path, num_recursions=2)
    assert "\n" not in str(err.value)


def test_another_encoder_runs_through_the_generic_path(tmp_path):
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(0)
    AlbertModel(AlbertConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=4,
                             num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0)).save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path, num_recursions=2)
    assert "generic path" in describe_family(teacher.family, "albert") and not teacher.has_mlm_head
    ids, mask = torch.randint(5, 100, (2, 12)), torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    out = teacher(ids, mask, output_attentions=False, output_query_key=True)
    ref = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")(
        input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.hidden_states[1], ref.hidden_states[4])
    torch.testing.assert_close(out.query_keys[0].probs, ref.attentions[1])


@pytest.mark.parametrize("family", ["roberta", "modernbert", "xlm-roberta", "deberta-v2"])
def test_ner_words_are_cut_as_in_running_text(folders, family):
    """Byte-level BPE marks word starts with a leading space (Ġ), SentencePiece with ▁: NER's words, handed to the
    tokenizer one by one, must become the pieces of the same text tokenised whole."""
    from minialbert.finetune.ner import Sentence, encode_ner, for_split_words

    tokenizer = AutoTokenizer.from_pretrained(folders[family])
    words = TEXTS[0].split()
    features, windows = encode_ner([Sentence(words, ["O"] * len(words), list(range(len(words))))],
                                   for_split_words(tokenizer), {"O": 0}, 64, 0)
    running = tokenizer(" " + TEXTS[0], add_special_tokens=False)["input_ids"]  # every word after a space
    assert features["input_ids"][0][1:-1] == running
    assert features["input_ids"][0][0] == tokenizer.cls_token_id and len(windows[0].first_piece) == len(words)


@pytest.mark.parametrize("family", ["roberta", "deberta-v2", "modernbert"])
def test_check_names_the_family_and_its_attention_path(folders, family, capsys):
    from minialbert.distill import main

    assert main(["--check", "--config", str(REPO / "configs/distill/tiny.yaml"), f"teacher.path={folders[family]}"]) == 0
    out = capsys.readouterr().out
    path = {"roberta": "fused: teacher queries and keys", "deberta-v2": "the teacher's own attention probabilities",
            "modernbert": "after rotary, local window in the mask"}[family]
    assert f"teacher family {TABLE[family].name} (model_type={family!r}); attention term: " in out and path in out
    assert "parameters: student" in out  # the student was shaped from this teacher's config


def test_an_electra_generator_teacher_has_its_logit_term(tmp_path):
    """ELECTRA's discriminator has no MLM head (the logit term is off); its generator has one."""
    from transformers import ElectraConfig, ElectraForMaskedLM

    torch.manual_seed(0)
    ElectraForMaskedLM(ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=4,
                                     num_attention_heads=4, intermediate_size=64, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)).save_pretrained(tmp_path)
    teacher = load_teacher(tmp_path, num_recursions=2)
    assert teacher.has_mlm_head
    ids, mask = torch.randint(5, 100, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    positions = torch.tensor([1, 3, 12])
    got = teacher(ids, mask, torch.zeros_like(ids), logits_positions=positions).logits
    want = AutoModelForMaskedLM.from_pretrained(tmp_path)(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want.reshape(-1, 100)[positions], rtol=1e-4, atol=1e-5)


def test_a_deberta_v3_folder_with_only_its_sentencepiece_model_loads_and_has_a_fingerprint(folders, tmp_path):
    """DeBERTa-v3 folders may hold spm.model and no tokenizer.json: the fast tokenizer is converted from it and the
    fingerprint reads it."""
    import shutil

    from data_prep.fingerprint import tokenizer_fingerprint

    raw = tmp_path / "deberta-v3"
    raw.mkdir()
    shutil.copy(f"{folders['deberta-v2']}_raw/spm.model", raw / "spm.model")
    (raw / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    tokenizer = AutoTokenizer.from_pretrained(raw)
    assert tokenizer.is_fast and tokenizer.mask_token == "[MASK]"
    assert tokenizer(TEXTS[0])["input_ids"] == AutoTokenizer.from_pretrained(folders["deberta-v2"])(TEXTS[0])["input_ids"]
    assert tokenizer_fingerprint(str(raw)) != tokenizer_fingerprint(str(folders["deberta-v2"]))  # other files, other hash


def test_a_deberta_checkpoint_with_its_head_as_lm_predictions_distils_that_head(tmp_path):
    """Microsoft's DeBERTa checkpoints keep the MLM head as lm_predictions.* and their config.json has no 'legacy'
    (transformers then builds cls.predictions.*): the teacher must load the saved head, not a random one."""
    from family_teachers import build_tokenizer, teacher_model

    build_tokenizer("deberta-v2", tmp_path)
    model = teacher_model("deberta-v2", AutoTokenizer.from_pretrained(tmp_path), True, 0)
    model.config.legacy = False
    model = type(model)(model.config)  # rebuilt with the lm_predictions head
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("legacy", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    teacher = load_teacher(tmp_path, num_recursions=2)
    assert teacher.has_mlm_head
    vocab = model.config.vocab_size
    ids, mask = torch.randint(5, vocab, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    positions = torch.tensor([1, 3, 12])
    got = teacher(ids, mask, torch.zeros_like(ids), logits_positions=positions).logits
    want = model.eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want.reshape(-1, vocab)[positions], rtol=1e-4, atol=1e-5)


def test_a_local_student_recursions_term_windows_its_own_side_too(folders):
    """The modernbert form's local recursion: the maps-free term with the student's window equals the reference on
    windowed student maps (value and gradient); without the window it would not."""
    folder = folders["modernbert"]
    ids, mask = batch(folder)
    teacher = load_teacher(folder, num_recursions=2).double()
    t_map = teacher(ids, mask, output_attentions=True).attentions[0]
    t_qk = teacher(ids, mask, output_attentions=False, output_query_key=True).query_keys[0]
    b, seq = ids.shape
    g = torch.Generator().manual_seed(1)
    q = torch.randn(b, 4, seq, 8, generator=g, dtype=torch.float64).requires_grad_()
    k = torch.randn(b, 4, seq, 8, generator=g, dtype=torch.float64).requires_grad_()
    pos = torch.arange(seq)
    allowed = mask.bool()[:, None, None, :] & ((pos[:, None] - pos[None, :]).abs() <= WINDOW)
    # finfo.min, not -inf: a padded row whose window holds no real key stays finite (and is ignored)
    scores = (q @ k.transpose(-1, -2) / 8 ** 0.5).masked_fill(~allowed, torch.finfo(q.dtype).min)
    want = maps_attention_kl(scores.softmax(-1), t_map, mask, "default")
    got = fused_attention_kl(q, k, t_qk, mask, "default", student_window=WINDOW)
    torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-7)
    for a, w in zip(torch.autograd.grad(got, (q, k)), torch.autograd.grad(want, (q, k))):
        torch.testing.assert_close(a, w.double(), rtol=1e-4, atol=1e-7)
    unwindowed = fused_attention_kl(q, k, t_qk, mask, "default")
    assert abs(unwindowed.item() - want.item()) > 1e-3


def test_the_deberta_forms_term_reads_both_models_maps(folders):
    """A deberta-form student hands over its maps (its scores are no query·key product): the fused step's term
    is the materialised one."""
    import dataclasses

    from minialbert.config import load_run_config
    from minialbert.step import distillation_forward
    from minialbert.student import build_student

    folder = folders["deberta-v2"]
    ids, mask = batch(folder)
    cfg = load_run_config(None, [f"teacher.path={folder}", "student.num_recursions=2", "student.init=random",
                                 "train.precision=fp32"])
    teacher = load_teacher(folder, 2, None)
    torch.manual_seed(0)
    student = build_student(cfg, teacher).eval()
    assert student.config.layer_form == "deberta"
    labels = torch.full_like(ids, -100)
    labels[:, 3] = ids[:, 3]
    batch_ = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    terms = {}
    for how in ("fused", "materialised"):
        loss = dataclasses.replace(cfg.loss, attention_kl=how)
        terms[how] = distillation_forward(student, teacher, batch_, loss)
    assert terms["fused"].attention.item() > 0
    torch.testing.assert_close(terms["fused"].attention, terms["materialised"].attention)
