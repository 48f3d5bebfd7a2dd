"""The distillation engine with real DeepSpeed engines (2 CPU ranks, gloo) on a tiny real teacher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM

from distill_helpers import REPO, build_teacher, distill_env, pack_shards, read_metrics, run_distill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = build_teacher(root / "teacher")
    shards = [pack_shards(teacher, root / "general", seed=0), pack_shards(teacher, root / "bio", seed=7)]
    return root, teacher, shards


def test_zero2_bf16_run_completes_and_its_export_loads(world, tmp_path):
    _, teacher, shards = world
    run_dir = tmp_path / "run"
    done = run_distill(run_dir, teacher, shards, launcher="deepspeed")  # the README's command
    assert done.returncode == 0, done.stderr[-3000:]
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    for key in ("step", "tokens", "loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output", "lr",
                "grad_norm", "tokens_per_s"):
        assert all(key in r for r in records), key
    assert records[-1]["loss"] < records[0]["loss"]
    assert (run_dir / "config.yaml").is_file() and (run_dir / "tensorboard").is_dir()
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000008"
    model = AutoModelForMaskedLM.from_pretrained(run_dir / "export")
    assert type(model).__name__ == "MiniAlbertForMaskedLM"
    # The adapters train during distillation and ship: the teacher init starts every up-projection at zero (an
    # identity adapter), so a non-zero one in the export has been trained.
    ups = {k: v for k, v in model.state_dict().items() if ".adapters." in k and k.endswith("up.weight")}
    assert len(ups) == 2 * 2 and all(v.abs().max() > 0 for v in ups.values()), "adapters left untrained"
    assert (run_dir / "export" / "tokenizer.json").is_file()
    assert "tokens seen" in (run_dir / "export" / "README.md").read_text()
    # DeepSpeed's CPU all-reduce segments (~69 MB of RAM each) are gone with the ranks, not left in /dev/shm.
    port = done.args[done.args.index("--master_port") + 1]
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))


def _first_losses(run_dir, n=3):
    return torch.tensor([[r[k] for k in ("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output")]
                         for r in read_metrics(run_dir)[:n]])


def _fp32_losses(world, run_dir, *extra: str, ds_config: str = "configs/ds/zero2.json"):
    _, teacher, shards = world
    done = run_distill(run_dir, teacher, shards, "--max-steps", "3", "train.precision=fp32", *extra, ds_config=ds_config)
    assert done.returncode == 0, done.stderr[-3000:]
    return _first_losses(run_dir)


@pytest.fixture(scope="module")
def zero2_fp32(world, tmp_path_factory):
    """ZeRO-2, fp32, micro-batch 4 (no accumulation), 3 steps: the run both comparisons below are made against."""
    return _fp32_losses(world, tmp_path_factory.mktemp("zero2_fp32") / "run")


def test_zero_stages_agree_in_fp32(world, zero2_fp32, tmp_path):
    for stage in (1, 3):
        losses = _fp32_losses(world, tmp_path / f"zero{stage}", ds_config=f"configs/ds/zero{stage}.json")
        torch.testing.assert_close(losses, zero2_fp32, rtol=1e-4, atol=1e-5)


def test_accumulation_matches_a_bigger_micro_batch(world, zero2_fp32, tmp_path):
    # global batch 8 on 2 ranks: micro-batches of 2 accumulated twice, against 4 once
    accumulated = _fp32_losses(world, tmp_path / "micro2", "train.micro_batch_size=2")
    torch.testing.assert_close(accumulated, zero2_fp32, rtol=1e-4, atol=1e-5)


def _single_process(tmp_path, *args, cwd=REPO):
    cmd = [sys.executable, str(REPO / "minialbert" / "distill.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=distill_env(), capture_output=True, text=True, timeout=300)


def _tiny_args(run_dir, teacher, shards, *extra):
    sources = "[" + ", ".join(f"{{path: {s}}}" for s in shards) + "]"
    return ["--config", str(REPO / "configs/distill/tiny.yaml"), "--run-dir", str(run_dir),
            f"teacher.path={teacher}", f"data.sources={sources}", *extra]


@pytest.mark.parametrize("override, message", [
    ("student.hidden_size=48", "student.hidden_size=48 but the teacher needs 32"),
    ("student.num_recursions=5", "student.num_recursions=5 exceeds the teacher's 4 layers"),
    ("train.micro_batch_size=3", "train.global_batch_size=8 is not a multiple of train.micro_batch_size"),
    ("student.nope=1", "unknown key; valid keys:"),
    ("teacher.path=/nonexistent/teacher", "teacher.path='/nonexistent/teacher'"),
])
def test_bad_config_stops_before_any_work(world, tmp_path, override, message):
    _, teacher, shards = world
    run_dir = tmp_path / "run"
    done = _single_process(tmp_path, *_tiny_args(run_dir, teacher, shards, override))
    assert done.returncode == 2
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], done.stderr[-2000:]
    assert not (run_dir / "checkpoints").exists()


def test_shards_of_another_tokenizer_are_refused(world, tmp_path):
    root, _, shards = world
    other = build_teacher(tmp_path / "other")
    spec = json.loads((other / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab["zzzextra"] = vocab.pop(max(vocab, key=vocab.get))  # same size, another token
    (other / "tokenizer.json").write_text(json.dumps(spec))
    done = _single_process(tmp_path, *_tiny_args(tmp_path / "run", other, shards))
    assert done.returncode == 2
    assert "fingerprint" in done.stderr


def test_embedded_default_names_the_command_that_makes_its_shards(tmp_path):
    done = _single_process(tmp_path, cwd=tmp_path)
    assert done.returncode == 2
    assert "minialbert.demo" in done.stderr and "manifest.json missing" in done.stderr


def test_deepspeed_json_contradicting_the_run_config_is_refused(world, tmp_path):
    _, teacher, shards = world
    ds_json = tmp_path / "ds.json"
    ds_json.write_text('{"zero_optimization": {"stage": 2}, "train_batch_size": 64}')
    done = _single_process(tmp_path, "--deepspeed", str(ds_json), *_tiny_args(tmp_path / "run", teacher, shards))
    assert done.returncode == 2
    assert "train_batch_size=64 contradicts the run config" in done.stderr
