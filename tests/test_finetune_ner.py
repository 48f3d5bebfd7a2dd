"""BioBERT-layout NER: reading, first-piece labels, windows and their rejoining, learning, bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from finetune_toys import write_ner_task, write_student, write_tokenizer

from minialbert.finetune import InputError
from minialbert.finetune.__main__ import main
from minialbert.finetune.ner import Sentence, encode_ner, entity_scores, load_ner, plan_windows, read_tsv, rejoin
from minialbert.finetune.training import load_tokenizer

QUIET = ["--precision", "fp32", "--no-progress", "--batch-size", "16", "--seeds", "1"]
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("ner")
    return SimpleNamespace(
        root=root,
        student=write_student(root / "student", initializer_range=0.2),
        # Every 4th sentence has 30-40 words: with --max-length 24 it needs several windows.
        data=write_ner_task(root / "toy-ner", long_every=4),
    )


def _ner(toys, out: Path, *extra) -> dict:
    assert main(["ner", "--data", str(toys.data), "--model", str(toys.student), "--max-length", "24",
                 "--window-overlap", "8", "--out", str(out), *QUIET, *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_full_tuning_learns_entities_through_windows(toys, tmp_path, capsys):
    summary = _ner(toys, tmp_path / "full", "--lr", "3e-3", "--epochs", "8")
    settings = summary["settings"]
    assert settings["labels"] == ["O", "B-Chemical", "B-Disease", "I-Disease"]
    assert settings["windows"]["test"] > settings["sentences"]["test"]  # long sentences were windowed
    scores = summary["best"]["mean"]
    assert scores["test_f1"] >= 0.85 and scores["devel_f1"] >= 0.85, scores
    assert summary["report_metrics"] == ["test_precision", "test_recall", "test_f1"]
    assert main(["report", str(tmp_path / "full")]) == 0
    table = capsys.readouterr().out
    assert "| toy-ner (P/R/F1) |" in table
    p, r, f = (f"{100 * scores[k]:.1f}" for k in summary["report_metrics"])
    assert "| student | full | " in table and f"{p} / {r} / {f}" in table


def test_adapter_only_tuning_learns_entities(toys, tmp_path):
    summary = _ner(toys, tmp_path / "ad", "--adapters-only", "--lr", "1e-2", "--epochs", "15")
    assert summary["best"]["mean"]["test_f1"] >= 0.8, summary["best"]["mean"]
    assert summary["params"]["trainable"] < summary["params"]["frozen"]
    weights = Path(summary["best_run"]["weights"])
    assert sorted(p.name for p in weights.iterdir()) == ["adapter_config.json", "adapters.safetensors"]


def test_labels_sit_on_the_first_word_piece(toys):
    tokenizer = load_tokenizer(toys.student)
    sent = Sentence(["patients", "with", "acute", "florbitis", "zanamide"], ["O", "O", "B-Disease", "I-Disease",
                                                                              "B-Chemical"], [1, 2, 3, 4, 5])
    label2id = {"O": 0, "B-Chemical": 1, "B-Disease": 2, "I-Disease": 3}
    feats, windows = encode_ner([sent], tokenizer, label2id, 64, 8)
    pieces = tokenizer.convert_ids_to_tokens(feats["input_ids"][0])
    assert pieces == ["[CLS]", "patients", "with", "acute", "flor", "##bitis", "zan", "##amide", "[SEP]"]
    assert feats["labels"][0] == [-100, 0, 0, 2, 3, -100, 1, -100, -100]
    assert windows[0].first_piece == [1, 2, 3, 4, 6]
    assert feats["token_type_ids"][0] == [0] * 9


def test_windows_cover_every_word_and_rejoin_exactly(toys):
    rng = random.Random(0)
    for _ in range(200):
        counts = [rng.randint(1, 4) for _ in range(rng.randint(1, 40))]
        limit, overlap = rng.randint(4, 12), rng.randint(0, 4)
        windows = plan_windows(counts, limit, overlap)
        assert windows[0][0] == 0 and windows[-1][1] == len(counts)
        for (s0, e0), (s1, e1) in zip(windows, windows[1:]):
            assert s0 < s1 <= e0 < e1  # moves forward on both ends, no gap
            assert sum(counts[s1:e0]) <= overlap
        assert all(sum(counts[s:e]) <= limit for s, e in windows)

    # Oracle logits (one-hot gold label at every first piece): rejoining must give back the gold labels.
    tokenizer = load_tokenizer(toys.student)
    splits, labels = load_ner(toys.data)
    label2id = {lab: i for i, lab in enumerate(labels)}
    sentences = splits["test"]
    feats, windows = encode_ner(sentences, tokenizer, label2id, 12, 4)
    assert len(windows) > 2 * len(sentences)
    assert all(len(ids) <= 12 for ids in feats["input_ids"])
    logits = [np.eye(len(labels))[np.maximum(np.array(lab), 0)] for lab in feats["labels"]]
    preds = rejoin(windows, logits, [len(s.words) for s in sentences])
    assert [[labels[i] for i in p] for p in preds] == [s.labels for s in sentences]


def test_word_longer_than_a_window_and_dropped_words(tmp_path):
    tokenizer = load_tokenizer(write_tokenizer(tmp_path))
    # "florbitisosis..." has many pieces; "\u200b" is dropped by the tokenizer altogether.
    sent = Sentence(["flor" + "bitis" * 12, "\u200b", "with"], ["B-Disease", "O", "O"], [1, 2, 3])
    feats, windows = encode_ner([sent], tokenizer, {"O": 0, "B-Disease": 1}, 6, 2)
    assert [(w.start, w.end) for w in windows] == [(0, 1), (1, 3)]
    assert all(len(ids) <= 6 for ids in feats["input_ids"])
    assert feats["input_ids"][1][1] == tokenizer.unk_token_id


def test_bare_biobert_tags_score_as_entities():
    true = [["O", "B", "I", "O", "B"]]
    assert entity_scores(true, true) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    half = entity_scores(true, [["O", "B", "I", "O", "O"]])
    assert half["precision"] == 1.0 and half["recall"] == 0.5


def test_label_unseen_in_train_names_file_and_line(toys, tmp_path, capsys):
    data = write_ner_task(tmp_path / "d", n_train=20, n_eval=5)
    devel = (data / "devel.tsv").read_text().splitlines()
    devel[2] = "BRCA1\tB-Gene"
    (data / "devel.tsv").write_text("\n".join(devel) + "\n")
    with pytest.raises(InputError, match=r"devel\.tsv:3: label 'B-Gene' never occurs in train\.tsv"):
        load_ner(data)
    assert main(["ner", "--data", str(data), "--model", str(toys.student), *QUIET]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "B-Gene" in err


def test_missing_split_is_an_error(tmp_path):
    data = write_ner_task(tmp_path / "d", n_train=5, n_eval=5)
    (data / "test.tsv").unlink()
    with pytest.raises(InputError, match=r"no test\.tsv \(BioBERT NER layout"):
        load_ner(data)


def test_malformed_line_is_a_one_line_error_with_file_and_line(toys, tmp_path):
    data = write_ner_task(tmp_path / "d", n_train=10, n_eval=5)
    lines = (data / "train.tsv").read_text().splitlines()
    lines[6] = "severe O"  # a space where the tab should be
    (data / "train.tsv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"train\.tsv:7: expected 'token<TAB>label', got 'severe O'"):
        read_tsv(data / "train.tsv")
    proc = subprocess.run(
        [sys.executable, "-m", "minialbert.finetune", "ner", "--data", str(data), "--model", str(toys.student),
         "--out", str(tmp_path / "o")],
        cwd=REPO, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {data / 'train.tsv'}:7: expected 'token<TAB>label', got 'severe O'"]
    assert not (tmp_path / "o").exists()


def test_training_set_without_entity_tags_warns_and_fails_with_strict(toys, tmp_path, capsys):
    """All labels 'O' (a column mix-up, a filter gone wrong): F1 is 0 whatever the model does, so say so."""
    data = write_ner_task(tmp_path / "d", n_train=20, n_eval=5)
    for split in ("train", "devel", "test"):
        path = data / f"{split}.tsv"
        lines = [f"{line.split(chr(9))[0]}\tO" if line else "" for line in path.read_text().splitlines()]
        path.write_text("\n".join(lines) + "\n")
    message = f"{data / 'train.tsv'}: no entity tags (every label is 'O'); entity F1 can only be 0"
    args = ["ner", "--data", str(data), "--model", str(toys.student), "--max-length", "24", *QUIET, "--epochs", "1"]
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message} (--strict)"]
    assert not (tmp_path / "strict").exists()
    assert main([*args, "--out", str(tmp_path / "warned")]) == 0
    assert [line for line in capsys.readouterr().err.splitlines() if "entity tags" in line] == [f"warning: {message}"]
    summary = json.loads((tmp_path / "warned" / "summary.json").read_text())
    assert summary["settings"]["labels"] == ["O"] and summary["best"]["mean"]["test_f1"] == 0.0
