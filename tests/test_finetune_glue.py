"""GLUE fine-tuning: a learnable toy pair task, full and adapter-only, a BERT baseline, sweeps, data formats."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from finetune_toys import pair_rows, write_bert, write_pair_task, write_student
from transformers import AutoModel, AutoModelForSequenceClassification

from minialbert.finetune import InputError, glue
from minialbert.finetune import metrics as M
from minialbert.finetune.__main__ import main
from minialbert.finetune.training import TrainConfig, build_model, load_tokenizer, predict, train
from minialbert.precision import bf16_supported

QUIET = ["--precision", "fp32", "--no-progress", "--batch-size", "16"]
FULL = ["--lr", "1e-3", "--epochs", "12", *QUIET]
ADAPTERS = ["--adapters-only", "--lr", "1e-2", "--epochs", "20", *QUIET]
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    return SimpleNamespace(
        root=root,
        # FFN 8x wide, adapter bottleneck 32 -> 4: the saved adapters (and the safetensors header) stay under
        # 10% of the model file, as they do at real sizes (H=768, r=16: adapters ~1% of the student).
        student=write_student(root / "student", initializer_range=0.2, intermediate_size=256,
                              adapter_reduction_factor=8),
        data=write_pair_task(root / "pair"),
    )


@pytest.fixture(scope="module")
def adapter_run(toys):
    out = toys.root / "adapters-run"
    assert main(["glue", "--task", "rte", "--model", str(toys.student), "--data", str(toys.data),
                 "--out", str(out), "--seeds", "1", *ADAPTERS]) == 0
    return json.loads((out / "lr0.01-seed1" / "result.json").read_text())


def _run(tmp_path, *argv) -> dict:
    assert main(["glue", *map(str, argv), "--out", str(tmp_path / "out")]) == 0
    return json.loads((tmp_path / "out" / "summary.json").read_text())


def test_full_tuning_learns_the_pair_task(toys, tmp_path):
    summary = _run(tmp_path, "--task", "rte", "--model", toys.student, "--data", toys.data, *FULL)
    run = json.loads((tmp_path / "out" / "lr0.001-seed42" / "result.json").read_text())
    assert run["metrics"]["accuracy"] >= 0.9, run["metrics"]
    assert run["params"]["frozen"] == 0
    assert summary["best"]["mean"]["accuracy"] == run["metrics"]["accuracy"]
    # The saved full model is a complete folder another tool can load.
    reloaded = AutoModelForSequenceClassification.from_pretrained(run["weights"])
    assert reloaded.config.id2label == {0: "entailment", 1: "not_entailment"}
    assert (Path(run["weights"]) / "tokenizer.json").is_file()


def test_adapter_only_tuning_learns_and_saves_only_adapters(toys, adapter_run):
    assert adapter_run["metrics"]["accuracy"] >= 0.85, adapter_run["metrics"]
    counts = adapter_run["params"]
    assert 0 < counts["trainable"] < counts["frozen"] / 4
    saved = sorted(p.name for p in Path(adapter_run["weights"]).iterdir())
    assert saved == ["adapter_config.json", "adapters.safetensors"]
    size = (Path(adapter_run["weights"]) / "adapters.safetensors").stat().st_size
    assert size < 0.10 * (toys.student / "model.safetensors").stat().st_size


def test_adapters_on_the_base_reproduce_the_run(toys, adapter_run):
    """Base folder + adapters file = the tuned model: the same validation metrics, exactly."""
    task = glue.TASKS["rte"]
    data = glue.load_glue(task, [str(toys.data)])
    tokenizer = load_tokenizer(toys.student)
    feats = glue.encode(task, data["validation"], tokenizer, 64)
    base = AutoModelForSequenceClassification.from_pretrained(str(toys.student), num_labels=2)
    base.load_adapters(adapter_run["weights"])
    logits = predict(base, feats, 64, torch.device("cpu"), None, tokenizer.pad_token_id)
    metrics = glue.compute_metrics(task, {"validation": logits}, {"validation": feats["labels"]})
    assert metrics == adapter_run["metrics"]


def test_adapter_reload_gives_identical_logits(toys, tmp_path):
    task = glue.TASKS["rte"]
    tokenizer = load_tokenizer(toys.student)
    data = glue.load_glue(task, [str(toys.data)])
    feats = glue.encode(task, data["train"], tokenizer, 64)
    torch.manual_seed(0)
    model, counts = build_model(toys.student, "sequence", {0: "a", 1: "b"}, False, adapters_only=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(model, feats, TrainConfig(lr=1e-2, epochs=1, batch_size=16, seed=0, device=torch.device("cpu"),
                                    autocast_dtype=None, progress=False), tokenizer.pad_token_id)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed == set(model.adapter_state_dict())  # only adapters and head moved
    tuned = predict(model, feats, 64, torch.device("cpu"), None, tokenizer.pad_token_id)
    model.save_adapters(tmp_path / "ad")
    base = AutoModelForSequenceClassification.from_pretrained(str(toys.student), num_labels=2)
    base.load_adapters(tmp_path / "ad")
    again = predict(base, feats, 64, torch.device("cpu"), None, tokenizer.pad_token_id)
    assert all(np.array_equal(a, b) for a, b in zip(tuned, again))


def test_plain_bert_baseline(toys, tmp_path, capsys):
    bert = write_bert(tmp_path / "bert")
    summary = _run(tmp_path, "--task", "rte", "--model", bert, "--data", toys.data, "--name", "bert-tiny", *FULL)
    assert summary["model_name"] == "bert-tiny" and summary["best"]["mean"]["accuracy"] >= 0.9
    assert main(["glue", "--task", "rte", "--model", str(bert), "--data", str(toys.data), "--adapters-only",
                 "--out", str(tmp_path / "x"), *QUIET]) == 2
    assert "--adapters-only needs a MiniALBERT model" in capsys.readouterr().err


def test_lr_grid_with_seeds_keeps_the_best_weights_and_reports(toys, tmp_path, capsys):
    summary = _run(tmp_path, "--task", "rte", "--model", toys.student, "--data", toys.data, "--lr", "1e-3", "3e-3",
                   "--seeds", "1", "2", "--epochs", "2", "--batch-size", "32", "--precision", "fp32")
    assert "step/s" in capsys.readouterr().err  # the tqdm bar with its time estimate
    runs = {(r["lr"], r["seed"]): r for r in
            (json.loads(p.read_text()) for p in (tmp_path / "out").glob("*/result.json"))}
    assert sorted(runs) == [(1e-3, 1), (1e-3, 2), (3e-3, 1), (3e-3, 2)]
    for g in summary["grid"]:
        accs = [runs[(g["lr"], s)]["metrics"]["accuracy"] for s in (1, 2)]
        assert g["mean"]["accuracy"] == pytest.approx(np.mean(accs))
        assert g["std"]["accuracy"] == pytest.approx(np.std(accs, ddof=1))
    assert summary["best"]["score_mean"] == max(g["score_mean"] for g in summary["grid"])
    kept = [r for r in runs.values() if r["weights"]]
    assert len(kept) == 1 and kept[0]["score"] == max(r["score"] for r in runs.values())
    assert len(list((tmp_path / "out").glob("*/model"))) == 1

    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert "| student | full |" in table and "RTE (Acc)" in table
    assert re.search(r"\| student \| full \| [0-9.]+K \([0-9.]+K, 100%\) \|", table)  # the trainable share
    best = summary["best"]
    assert f"{100 * best['mean']['accuracy']:.1f}±{100 * best['std']['accuracy']:.1f}" in table


def test_stsb_regression_and_mnli_splits_from_local_formats(toys, tmp_path):
    import datasets

    rows = pair_rows(300, 1)
    as_sts = lambda rs: {"sentence1": [r["sentence1"] for r in rs], "sentence2": [r["sentence2"] for r in rs],
                         "label": [5.0 * (1 - r["label"]) for r in rs]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(as_sts(rows)),
                          "validation": datasets.Dataset.from_dict(as_sts(pair_rows(100, 2)))}
                         ).save_to_disk(str(tmp_path / "stsb"))
    summary = _run(tmp_path, "--task", "stsb", "--model", toys.student, "--data", tmp_path / "stsb", *FULL)
    assert summary["best"]["mean"]["pearson"] >= 0.8 and summary["best"]["mean"]["spearman"] >= 0.7

    # MNLI: jsonl files with label names, found through a parent folder holding mnli/.
    names = ["entailment", "contradiction"]
    mnli = tmp_path / "glue" / "mnli"
    mnli.mkdir(parents=True)
    for split, seed in (("train", 1), ("dev_matched", 2), ("dev_mismatched", 3)):
        with (mnli / f"{split}.jsonl").open("w") as f:
            for r in pair_rows(60, seed):
                f.write(json.dumps({"premise": r["sentence1"], "hypothesis": r["sentence2"],
                                    "label": names[r["label"]]}) + "\n")
    summary = _run(tmp_path, "--task", "mnli", "--model", toys.student, "--data", tmp_path / "glue",
                   "--epochs", "1", *QUIET)
    assert set(summary["best"]["mean"]) == {"accuracy_matched", "accuracy_mismatched"}
    assert summary["settings"]["eval_examples"] == {"validation_matched": 60, "validation_mismatched": 60}


def test_files_with_label_names_and_explicit_splits(tmp_path):
    write_pair_task(tmp_path, n_train=5, n_val=4, label_names=True)
    data = glue.load_glue(glue.TASKS["rte"], [f"train={tmp_path / 'train.tsv'}", str(tmp_path / "validation.tsv")])
    assert set(data) == {"train", "validation"}
    assert set(data["train"]["label"]) <= {0, 1} and len(data["validation"]["label"]) == 4


def test_glue_metrics_match_their_definitions():
    p, r = np.array([1, 1, 0, 0, 1, 0]), np.array([1, 0, 0, 1, 1, 0])
    tp, tn, fp, fn = 2, 2, 1, 1
    assert M.accuracy(p, r) == pytest.approx(4 / 6)
    assert M.binary_f1(p, r) == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert M.matthews_corrcoef(p, r) == pytest.approx(mcc)
    assert M.matthews_corrcoef(np.ones(6), r) == 0.0  # constant prediction
    x, y = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 4.0, 9.0, 16.0])
    assert M.spearman(x, y) == pytest.approx(1.0)
    assert M.pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])


def _cli(*argv) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minialbert.finetune", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def test_missing_validation_split_is_a_one_line_error(toys, tmp_path):
    write_pair_task(tmp_path / "d", n_train=10, n_val=2)
    (tmp_path / "d" / "validation.tsv").unlink()
    proc = _cli("glue", "--task", "rte", "--model", toys.student, "--data", tmp_path / "d", "--out", tmp_path / "o")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'd'}: no 'validation' split"), proc.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content, message", [
    ("index\tsentence1\tlabel\n0\ta cat\t1\n", "no column 'sentence2'"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta cat\ta dog\tmaybe\n", "train.tsv:2: label 'maybe' is not valid for rte"),
    ("index\tsentence1\tsentence2\tlabel\n0\ta cat\ta dog\t1\n1\ta cat\t1\n", "train.tsv:3: expected 4 fields"),
])
def test_bad_glue_files_name_file_and_line(toys, tmp_path, capsys, content, message):
    write_pair_task(tmp_path, n_train=4, n_val=4)
    (tmp_path / "train.tsv").write_text(content)
    assert main(["glue", "--task", "rte", "--model", str(toys.student), "--data", str(tmp_path), *QUIET]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_model_folder_must_exist(tmp_path, capsys):
    assert main(["glue", "--task", "rte", "--model", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err
    with pytest.raises(InputError, match="no such file"):
        glue.load_glue(glue.TASKS["rte"], [str(tmp_path / "nope.tsv")])
    assert main(["report", str(tmp_path)]) == 2
    assert "no summary.json under" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{}")
    assert main(["report", str(tmp_path)]) == 2
    assert "summary.json: not a fine-tuning summary" in capsys.readouterr().err


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="no native bf16 on this CPU")
def test_bf16_autocast_on_cpu(toys, tmp_path):
    summary = _run(tmp_path, "--task", "rte", "--model", toys.student, "--data", toys.data, "--lr", "1e-3",
                   "--epochs", "12", "--batch-size", "16", "--no-progress", "--precision", "auto")
    assert summary["settings"]["precision"] == "bf16"
    assert summary["best"]["mean"]["accuracy"] >= 0.9


def _sentence_transformers_copy(student: Path, out: Path) -> Path:
    """The toy student as an export of a sentence-transformers teacher's student: its modules.json and mean
    Pooling (what minialbert.export writes), nothing else changed."""
    import shutil

    shutil.copytree(student, out)
    hidden = json.loads((student / "config.json").read_text())["hidden_size"]
    (out / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (out / "1_Pooling").mkdir()
    (out / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden,
                                                               "pooling_mode_mean_tokens": True}))
    return out


def test_a_sentence_embedding_model_scores_similarity_pairs_by_the_cosine_of_its_embeddings(toys, tmp_path):
    """STS-B on a sentence-transformers folder runs as a bi-encoder (--pair-encoding auto): the prediction of a
    pair is 5 x the cosine of the two sentences' mean-pooled embeddings, from the saved encoder alone."""
    from minialbert.sentence_similarity import embed

    folder = _sentence_transformers_copy(toys.student, tmp_path / "st-student")
    rows = pair_rows(200, 1)
    as_sts = lambda rs: "".join(f"{r['sentence1']}\t{r['sentence2']}\t{5.0 * (1 - r['label'])}\n" for r in rs)
    (tmp_path / "stsb").mkdir()
    (tmp_path / "stsb" / "train.tsv").write_text("sentence1\tsentence2\tlabel\n" + as_sts(rows))
    val = pair_rows(60, 2)
    (tmp_path / "stsb" / "dev.tsv").write_text("sentence1\tsentence2\tlabel\n" + as_sts(val))
    summary = _run(tmp_path, "--task", "stsb", "--model", folder, "--data", tmp_path / "stsb", "--lr", "1e-3",
                   "--epochs", "4", *QUIET)
    assert summary["settings"]["pair_encoding"] == "siamese"
    encoder = AutoModel.from_pretrained(Path(summary["best_run"]["weights"]))
    tokenizer = load_tokenizer(folder)
    a = embed(encoder, tokenizer, [r["sentence1"] for r in val], "mean")
    b = embed(encoder, tokenizer, [r["sentence2"] for r in val], "mean")
    scores = 5 * torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    gold = np.array([5.0 * (1 - r["label"]) for r in val])
    assert summary["best"]["mean"]["pearson"] == pytest.approx(M.pearson(scores, gold), abs=1e-4)
    assert summary["best"]["mean"]["pearson"] > 0.5  # it learnt the toy similarity

    adapters = _run(tmp_path / "ad", "--task", "stsb", "--model", folder, "--data", tmp_path / "stsb",
                    "--adapters-only", "--lr", "1e-2", "--epochs", "2", *QUIET)
    assert adapters["settings"]["pair_encoding"] == "siamese"
    counts = json.loads(next((tmp_path / "ad" / "out").glob("*/result.json")).read_text())["params"]
    model, _ = build_model(folder, "similarity", {0: "score"}, True, adapters_only=True)
    assert counts["trainable"] == sum(p.numel() for n, p in model.named_parameters() if ".adapters." in n)


def test_cross_encoding_stays_the_default_elsewhere_and_siamese_needs_a_similarity_task(toys, tmp_path, capsys):
    assert glue.pair_encoding(glue.TASKS["stsb"], str(toys.student), "auto") == "cross"  # no modules.json
    folder = _sentence_transformers_copy(toys.student, tmp_path / "st-student")
    assert glue.pair_encoding(glue.TASKS["rte"], str(folder), "auto") == "cross"
    assert main(["glue", "--task", "rte", "--model", str(folder), "--data", str(toys.data), "--pair-encoding",
                 "siamese", "--out", str(tmp_path / "x"), *QUIET]) == 2
    assert "--pair-encoding siamese: rte is not a similarity task (expected one of stsb)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_merge_of_per_seed_sweeps_is_the_sweep_over_both_seeds(toys, tmp_path, capsys):
    """Seeds run as separate jobs, merged: the same grid (mean ± std) as one sweep over both; another row refused."""
    quick = ["--task", "rte", "--model", toys.student, "--data", toys.data, "--epochs", "1", "--save", "none", *QUIET]
    both = _run(tmp_path / "both", *quick, "--seeds", "1", "2")
    for seed in (1, 2):
        _run(tmp_path / f"s{seed}", *quick, "--seeds", str(seed))
    sources = [str(tmp_path / f"s{seed}" / "out") for seed in (1, 2)]
    assert main(["merge", *sources, "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "summary.json").read_text())
    assert merged["grid"][0]["seeds"] == [1, 2]
    for key in ("mean", "std"):
        assert merged["best"][key] == pytest.approx(both["best"][key])
    assert merged["best_run"]["dir"].startswith(sources[merged["best_run"]["seed"] - 1])
    _run(tmp_path / "ad", *quick, "--seeds", "3", "--adapters-only")
    capsys.readouterr()
    assert main(["merge", sources[0], str(tmp_path / "ad" / "out"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {tmp_path / 'ad' / 'out'}: another sweep (mode 'adapters') "
                                               f"than {sources[0]} (mode 'full')")
    assert main(["merge", sources[0], sources[0], "--out", str(tmp_path / "x")]) == 2
    assert "lr 5e-05 seed 1 also in" in capsys.readouterr().err
