"""Each non-BERT teacher family end to end: pack with its own tokenizer -> 2 distillation steps (1 CPU process) ->
export -> the export loads where minialbert is not importable and computes what the package computes. Then the
tokenizer-mismatch error, and NER and GLUE fine-tuning of students of a byte-level BPE and a SentencePiece teacher."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distill_helpers import REPO, distill_env, read_metrics
from family_teachers import build_family_teacher, pack_in_process
from test_export_standalone import assert_same_as_package, run_child

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
FAMILIES = ("roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert")  # BERT: tests/test_distill.py


def distill_one_process(run_dir, teacher, shards, *extra):
    """One rank without the launcher (distill.py sets up a world of 1 itself)."""
    cmd = [sys.executable, "minialbert/distill.py", "--deepspeed", "configs/ds/zero2.json", "--config",
           "configs/distill/tiny.yaml", "--run-dir", str(run_dir), f"teacher.path={teacher}",
           f"data.sources=[{{path: {shards}}}]", *extra]
    return subprocess.run(cmd, cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_runs")
    out = {}
    for family in FAMILIES:
        teacher = build_family_teacher(family, root / f"{family}_teacher")
        shards = pack_in_process(teacher, root / f"{family}_shards")
        run_dir = root / f"{family}_run"
        done = distill_one_process(run_dir, teacher, shards, "--max-steps", "2")
        assert done.returncode == 0, family + done.stdout[-3000:] + done.stderr[-3000:]
        out[family] = teacher, shards, run_dir, done.stdout
    return out


def test_every_family_distils_and_exports_a_student_that_loads_without_minialbert(runs, tmp_path):
    from transformers import AutoTokenizer

    for family, (teacher, shards, run_dir, stdout) in runs.items():
        assert [r["step"] for r in read_metrics(run_dir)] == [1, 2], family
        assert f"model_type={family!r}" in stdout and "attention term:" in stdout
        assert ("teacher has no MLM head: output-logit distillation is off" in stdout) == (family == "electra")
        manifest = json.loads((shards / "manifest.json").read_text())
        special = AutoTokenizer.from_pretrained(teacher)
        assert manifest["tokenizer"]["special_ids"]["mask"] == special.mask_token_id  # the teacher's, not BERT's
        export = run_dir / "export"
        config = json.loads((export / "config.json").read_text())
        assert config["pad_token_id"] == special.pad_token_id and config["vocab_size"] == len(special)
        assert config["max_position_embeddings"] == 64  # RoBERTa/XLM-R: its 66 rows less padding_idx + 1
    loads = [{"key": family, "folder": run_dir / "export", "auto": "AutoModelForMaskedLM"}
             for family, (_, _, run_dir, _) in runs.items()]
    got = run_child(tmp_path, loads)
    for load in loads:
        assert_same_as_package(got[load["key"]], load)


def test_shards_of_another_tokenizer_stop_the_run_naming_both(runs, tmp_path):
    roberta, _, _, _ = runs["roberta"]
    _, xlmr_shards, _, _ = runs["xlm-roberta"]
    done = distill_one_process(tmp_path / "run", roberta, xlmr_shards)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    assert "'xlm-roberta_teacher' (XLMRobertaTokenizer" in errors[0] and f"tokenizer {roberta}" in errors[0]


QUICK = ["--precision", "fp32", "--no-progress", "--batch-size", "16", "--seeds", "1", "--epochs", "1"]


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "modernbert"])
def test_ner_and_glue_fine_tune_students_of_bpe_and_sentencepiece_teachers(runs, tmp_path, family):
    """... and of the modernbert form (a ModernBERT teacher's student), adapters only as well."""
    from finetune_toys import write_ner_task, write_pair_task
    from minialbert.finetune.__main__ import main

    export = runs[family][2] / "export"
    ner = write_ner_task(tmp_path / "ner", n_train=40, n_eval=10)
    assert main(["ner", "--data", str(ner), "--model", str(export), "--out", str(tmp_path / "ner_out"),
                 "--max-length", "32", *QUICK]) == 0
    summary = json.loads((tmp_path / "ner_out" / "summary.json").read_text())
    assert 0.0 <= summary["best"]["mean"]["test_f1"] <= 1.0
    glue = write_pair_task(tmp_path / "rte", n_train=40, n_val=10)
    assert main(["glue", "--task", "rte", "--model", str(export), "--data", str(glue), "--out",
                 str(tmp_path / "glue_out"), *QUICK]) == 0
    assert json.loads((export / "config.json").read_text())["layer_form"] == ("modernbert" if family == "modernbert"
                                                                             else "bert")
    assert main(["glue", "--task", "rte", "--model", str(export), "--data", str(glue), "--out",
                 str(tmp_path / "adapters_out"), "--adapters-only", *QUICK]) == 0
    run = json.loads((tmp_path / "adapters_out" / "lr0.002-seed1" / "result.json").read_text())
    assert 0 < run["params"]["trainable"] < 0.2 * run["params"]["frozen"]
