"""Checkpoints, exact resume, preemption and export with real DeepSpeed runs (2 CPU ranks, gloo, tiny.yaml).

Each run is a module-scoped fixture shared by the tests that read it: a straight run, a run SIGKILLed mid-way
then resumed, a run killed in the middle of a checkpoint save then resumed, a run stopped by SIGUSR1/SIGTERM then
resumed on 1 rank, a ZeRO-3 run that is exported, and an fp16 run where the CPU supports fp16.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForMaskedLM

from distill_helpers import REPO, distill_env, read_metrics, run_distill
from run_watch import (DROPOUT, EVERY_2, assert_same_records, assert_same_weights, engine_weights, finish, latest,
                       log_tail, logged_steps, make_world, rank_processes, start_distill, trainer_state,
                       wait_for_step)

MAX_STEPS = 8
# Every run of this module with the loss terms compiled (train.compile=on; auto compiles only where bf16 is native):
# exact resume holds for the compiled step as for the eager one.
RUN = (*DROPOUT, "train.compile=on")
LOSSES = ("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output")
TAGS = ("loss/total", "loss/mlm", "loss/attention", "loss/hidden", "loss/output", "loss/attention_recursion_0",
        "loss/attention_recursion_1", "loss/hidden_recursion_0", "loss/hidden_recursion_1", "train/lr",
        "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s", "perf/tflops", "perf/mfu", "mem/peak_gb",
        "data/epoch")


# ----------------------------------------------------------------------------- the runs


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("resume"))


@pytest.fixture(scope="module")
def straight(world):
    """8 steps, checkpoints every 2; --no-resume into a new run dir is allowed."""
    run_dir = world[0] / "straight"
    assert finish(start_distill(run_dir, world, EVERY_2, *RUN, "--no-resume")) == 0, log_tail(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def killed(world):
    """SIGKILL to the launcher's whole process group once step 5 is logged, then the same command again."""
    run_dir = world[0] / "killed"
    proc = start_distill(run_dir, world, EVERY_2, *RUN)
    try:
        at_kill = wait_for_step(proc, run_dir, 5)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        finish(proc)
    before = {"code": proc.returncode, "logged": at_kill, "latest": latest(run_dir)}
    assert finish(start_distill(run_dir, world, EVERY_2, *RUN)) == 0, log_tail(run_dir)
    return run_dir, before


@pytest.fixture(scope="module")
def crashed_in_save(world):
    """Every rank SIGKILLs itself in the middle of saving step 6 (MINIALBERT_FAULT_AFTER_SHARDS), then resume."""
    from minialbert.export import export_checkpoint

    run_dir = world[0] / "crashed"
    code = finish(start_distill(run_dir, world, EVERY_2, *RUN, env={"MINIALBERT_FAULT_AFTER_SHARDS": "6"}))
    ckpts = run_dir / "checkpoints"
    before = {
        "code": code, "latest": latest(run_dir), "logged": logged_steps(run_dir),
        "step6_files": sorted(p.name for p in (ckpts / "step_00000006").iterdir()),
        "events": {p.name: _scalar_steps(p) for p in (run_dir / "tensorboard").iterdir()},
    }
    # Loadable as it is: DeepSpeed gathers its shards into a model that loads in transformers.
    export = export_checkpoint(run_dir, None, world[0] / "crashed_export")
    before["export"] = AutoModelForMaskedLM.from_pretrained(export).state_dict()
    assert finish(start_distill(run_dir, world, EVERY_2, *RUN)) == 0, log_tail(run_dir)
    return run_dir, before


@pytest.fixture(scope="module")
def preempted(world):
    """SIGUSR1 to rank 0 and SIGTERM to rank 1 (Slurm's --signal and scancel) after step 2; then resume on 1 rank."""
    run_dir = world[0] / "preempted"
    proc = start_distill(run_dir, world, *RUN)
    try:
        sent_after = wait_for_step(proc, run_dir, 2)
        ranks = sorted(rank_processes(proc), key=lambda p: p.cmdline())  # --local_rank=0 first
        assert len(ranks) == 2
        ranks[0].send_signal(signal.SIGUSR1)
        ranks[1].send_signal(signal.SIGTERM)
        logged_at_signal = logged_steps(run_dir)[-1]
    finally:
        code = finish(proc)
    tag = latest(run_dir)
    before = {"code": code, "sent_after": sent_after, "logged_at_signal": logged_at_signal, "latest": tag,
              "logged": logged_steps(run_dir), "states": [trainer_state(run_dir, tag, r) for r in (0, 1)],
              "log": log_tail(run_dir)}
    _, teacher, shards = world
    done = run_distill(run_dir, teacher, shards, *RUN, ranks=1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir, before, done


def _scalar_steps(event_file: Path) -> dict[str, list[int]]:
    """{tag: steps} of the scalars in one event file, as written (no purging)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, list[int]] = {}
    for event in EventFileLoader(str(event_file)).Load():
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "scalars":
                out.setdefault(value.tag, []).append(event.step)
    return out


def _accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


# ----------------------------------------------------------------------------- exact resume after SIGKILL


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_straight_run(straight, killed):
    run_dir, before = killed
    assert before["code"] == -signal.SIGKILL
    assert before["logged"] >= 5 and before["latest"] in ("step_00000004", "step_00000006")  # killed mid-run
    assert f"resumed from {run_dir / 'checkpoints' / before['latest']}" in log_tail(run_dir)
    # Per-step losses bit for bit, every step once (the steps after the checkpoint were logged again).
    assert_same_records(read_metrics(run_dir), read_metrics(straight))
    assert_same_weights(engine_weights(run_dir), engine_weights(straight))
    export = AutoModelForMaskedLM.from_pretrained(run_dir / "export").state_dict()
    assert_same_weights(export, AutoModelForMaskedLM.from_pretrained(straight / "export").state_dict())


@pytest.mark.slow
def test_checkpoint_holds_step_tokens_stream_rng_and_config_not_the_teacher(world, straight):
    ckpt = straight / "checkpoints" / "step_00000008"
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["step"] == 8 and meta["world_size"] == 2 and meta["tokens"] == read_metrics(straight)[-1]["tokens"]
    assert "loss_scale" in meta and "teacher:" in meta["config"] and "every_steps: 2" in meta["config"]
    for rank in (0, 1):
        state = trainer_state(straight, "step_00000008", rank)
        assert state["stream"]["samples_consumed"] == 8 * 8  # 8 steps of a global batch of 8
        assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert sorted(p.name for p in (straight / "checkpoints").glob("step_*")) == ["step_00000006", "step_00000008"]
    weights = engine_weights(straight)
    assert all(k.startswith(("minialbert.", "mlm_head.")) for k in weights)  # the student's, no teacher's
    teacher = AutoModelForMaskedLM.from_pretrained(world[1])
    assert sum(v.numel() for v in weights.values()) < sum(p.numel() for p in teacher.parameters())


# ----------------------------------------------------------------------------- LAMB: exact resume too

LAMB = "optim.name=lamb"
LAMB_DROPOUT = DROPOUT[:2]  # dropout on; tiny.yaml's peak FLOP/s (measuring bf16 matmuls is slow on a busy CPU)


@pytest.fixture(scope="module")
def lamb_straight(world):
    run_dir = world[0] / "lamb_straight"
    assert finish(start_distill(run_dir, world, EVERY_2, *LAMB_DROPOUT, LAMB, "--no-resume")) == 0, log_tail(run_dir)
    return run_dir


@pytest.mark.slow
def test_lamb_sigkill_then_resume_equals_the_straight_run(world, lamb_straight):
    run_dir = world[0] / "lamb_killed"
    proc = start_distill(run_dir, world, EVERY_2, *LAMB_DROPOUT, LAMB)
    try:
        wait_for_step(proc, run_dir, 5)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        finish(proc)
    assert latest(run_dir) in ("step_00000004", "step_00000006")
    assert finish(start_distill(run_dir, world, EVERY_2, *LAMB_DROPOUT, LAMB)) == 0, log_tail(run_dir)
    assert f"resumed from {run_dir / 'checkpoints'}" in log_tail(run_dir)
    assert "name: lamb" in (run_dir / "config.yaml").read_text()
    assert_same_records(read_metrics(run_dir), read_metrics(lamb_straight))
    assert_same_weights(engine_weights(run_dir), engine_weights(lamb_straight))


# ----------------------------------------------------------------------------- ZeRO stage 0 (no partitioning)


@pytest.mark.slow
def test_zero0_runs_checkpoints_resumes_on_one_rank_and_exports(world, tmp_path):
    _, teacher, shards = world
    run_dir = world[0] / "zero0"
    stage0 = dict(ds_config="configs/ds/zero0.json")
    done = run_distill(run_dir, teacher, shards, "--max-steps", "4", EVERY_2, "train.precision=fp32", **stage0)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in (run_dir / "checkpoints" / "step_00000004").iterdir())
    assert "mp_rank_00_model_states.pt" in files and not any("optim_states" in f for f in files)  # one full copy
    records = read_metrics(run_dir)
    assert all(r["grad_norm"] == r["grad_norm"] < float("inf") for r in records)  # logged without ZeRO too
    # Continued on 1 rank: the full copy loads as it is (no universal conversion), the stream goes on.
    done = run_distill(run_dir, teacher, shards, "--max-steps", "6", EVERY_2, "train.precision=fp32", ranks=1,
                       **stage0)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000004'} at step 4" in done.stdout
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 7))
    assert not (run_dir / "checkpoints" / "step_00000004_universal").exists()
    out = tmp_path / "export"
    cli = subprocess.run([sys.executable, "-m", "minialbert.export", str(run_dir), "--tag", "step_00000004",
                          "--out", str(out)], cwd=REPO, env=distill_env(), capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    engine = engine_weights(run_dir, "step_00000004")
    exported = AutoModelForMaskedLM.from_pretrained(out).state_dict()
    assert_same_weights({k: exported[k] for k in engine}, engine)
    AutoModelForMaskedLM.from_pretrained(run_dir / "export")  # the end-of-run export (step 6)


# ----------------------------------------------------------------------------- a crash during a save


@pytest.mark.slow
def test_crash_while_saving_leaves_the_previous_checkpoint_latest_and_loadable(straight, crashed_in_save):
    run_dir, before = crashed_in_save
    assert before["code"] != 0
    assert before["logged"] == [1, 2, 3, 4, 5, 6]  # the crash came in the save after step 6
    assert before["latest"] == "step_00000004"
    # The ranks had written their shards and states; the save never completed (no meta.json).
    assert "trainer_state_rank1.pt" in before["step6_files"] and "meta.json" not in before["step6_files"]
    assert any("optim_states" in name for name in before["step6_files"])
    assert before["export"]  # step 4 was exported as it stood
    # The resume starts from step 4, redoes 5 and 6 exactly, replaces the half-written step 6 and finishes.
    assert "resumed from" in log_tail(run_dir) and "step_00000004 at step 4" in log_tail(run_dir)
    assert_same_records(read_metrics(run_dir), read_metrics(straight))
    assert_same_weights(engine_weights(run_dir), engine_weights(straight))
    assert (run_dir / "checkpoints" / "step_00000006" / "meta.json").is_file()


@pytest.mark.slow
def test_tensorboard_carries_every_tag_and_one_event_per_step_across_a_resume(crashed_in_save):
    run_dir, before = crashed_in_save
    # The crashed run's event file holds steps 5 and 6, after its last checkpoint: the resume must hide them.
    (first_file, first_steps), = [(n, s) for n, s in before["events"].items()]
    assert first_steps["loss/total"] == [1, 2, 3, 4, 5, 6]
    acc = _accumulator(run_dir)
    assert set(acc.Tags()["scalars"]) >= set(TAGS)
    metrics = read_metrics(run_dir)
    for tag in TAGS:
        steps = [e.step for e in acc.Scalars(tag)]
        assert steps == list(range(1, MAX_STEPS + 1)), (tag, steps)
    assert [e.value for e in acc.Scalars("loss/total")] == [pytest.approx(r["loss"], rel=1e-6) for r in metrics]
    assert [e.value for e in acc.Scalars("train/lr")] == [pytest.approx(r["lr"], rel=1e-6) for r in metrics]
    assert [e.value for e in acc.Scalars("data/epoch")] == [r["epoch"] for r in metrics]
    assert all(e.value > 0 for e in acc.Scalars("mem/peak_gb"))
    # The hyper-parameters, written once by the first run.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optim.lr"].number_value == pytest.approx(1e-3)
    assert hparams["train.global_batch_size"].number_value == 8
    assert hparams["train.precision"].string_value == "bf16"


# ----------------------------------------------------------------------------- preemption, fewer ranks


@pytest.mark.slow
def test_stop_signals_save_within_one_step_and_exit_75(preempted):
    run_dir, before, _ = preempted
    assert before["code"] == 75, before["log"]
    saved = int(before["latest"].removeprefix("step_"))
    # Each rank checks for a signal after every step: the save comes at the step in flight, at the latest.
    assert before["sent_after"] <= saved <= before["logged_at_signal"] + 1 < MAX_STEPS
    assert before["logged"] == list(range(1, saved + 1))  # nothing after the save
    assert f"stopped by signal at step {saved}; checkpoint saved; exit 75" in before["log"]
    assert [s["stream"]["samples_consumed"] for s in before["states"]] == [saved * 8, saved * 8]


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_on_one_rank_and_continues_the_stream(straight, preempted):
    run_dir, before, done = preempted
    saved = int(before["latest"].removeprefix("step_"))
    assert f"resumed from {run_dir / 'checkpoints' / before['latest']} at step {saved}" in done.stdout
    assert "world 1 x micro 4 x accumulation 2" in done.stdout
    records, reference = read_metrics(run_dir), read_metrics(straight)
    assert [r["step"] for r in records] == list(range(1, MAX_STEPS + 1))
    # The same samples as the 2-rank run at every step: the per-step token counts (which vary from step to step
    # with these shards) agree. Losses only roughly: the RNG streams (dropout) are new on a new rank count.
    step_tokens = [r["tokens"] for r in reference]
    assert len({b - a for a, b in zip([0] + step_tokens, step_tokens)}) > 2
    assert [r["tokens"] for r in records] == step_tokens
    torch.testing.assert_close(torch.tensor([records[-1][k] for k in LOSSES]),
                               torch.tensor([reference[-1][k] for k in LOSSES]), rtol=0.1, atol=1e-3)
    meta = json.loads((run_dir / "checkpoints" / "step_00000008" / "meta.json").read_text())
    assert meta["world_size"] == 1
    assert trainer_state(run_dir, "step_00000008", 0)["stream"]["samples_consumed"] == MAX_STEPS * 8
    assert not (run_dir / "checkpoints" / "latest_universal").exists()
    AutoModelForMaskedLM.from_pretrained(run_dir / "export")


# ----------------------------------------------------------------------------- export from ZeRO-3


def _fp16_supported() -> bool:
    from deepspeed.accelerator import get_accelerator

    return bool(get_accelerator().is_fp16_supported())  # DeepSpeed's CPU accelerator: AVX512-FP16 or AMX


needs_fp16 = pytest.mark.skipif(not _fp16_supported(), reason="DeepSpeed's accelerator supports no fp16 on this "
                                "machine (a CPU without AVX512-FP16/AMX refuses it: 'Type fp16 is not supported')")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["1", "3"])
def test_compiled_loss_terms_give_zero_2s_losses_at_stages_1_and_3(world, straight, stage):
    """The straight run (ZeRO-2, compiled loss terms, dropout on) against the same run at ZeRO-1 / ZeRO-3: the
    compiled kernels see the same inputs whatever the partitioning, so every logged term is ZeRO-2's up to the
    order of the fp32 gradient reductions (measured 4e-5 relative by step 4; bf16 resolution is 4e-3; a term near
    zero, the output KL at ~2e-3, moved by 2e-6 once: hence an absolute floor of 1e-5). A bf16
    ZeRO-1 run (DeepSpeed's BF16_Optimizer layout) also exports its weights: the engine's own, to bf16 rounding."""
    run_dir = world[0] / f"compiled_zero{stage}"
    _, teacher, shards = world
    done = run_distill(run_dir, teacher, shards, *RUN, "--max-steps", "4", ds_config=f"configs/ds/zero{stage}.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "train.compile: on" in done.stdout
    records, reference = read_metrics(run_dir), read_metrics(straight)[:4]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for key in LOSSES:
        torch.testing.assert_close(torch.tensor([r[key] for r in records]), torch.tensor([r[key] for r in reference]),
                                   rtol=5e-4, atol=1e-5, msg=lambda m: f"ZeRO-{stage} {key}: {m}")
    if stage == "1":  # the engine's bf16 weights (ZeRO-3 keeps no whole module in one file)
        exported = AutoModelForMaskedLM.from_pretrained(run_dir / "export").state_dict()
        module = torch.load(run_dir / "checkpoints" / latest(run_dir) / "mp_rank_00_model_states.pt",
                            map_location="cpu", weights_only=False)["module"]
        different = [k for k, v in module.items() if not torch.equal(exported[k].to(v.dtype), v)]
        assert not different, f"exported weights differ from the engine's: {different}"


@pytest.mark.slow
def test_export_of_a_zero3_checkpoint_loads_and_equals_the_engine_weights(world, tmp_path):
    run_dir = world[0] / "zero3"
    _, teacher, shards = world
    done = run_distill(run_dir, teacher, shards, "--max-steps", "4", ds_config="configs/ds/zero3.json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    assert any(p.name.startswith("zero_pp_rank_1") for p in (ckpts / "step_00000004").iterdir())  # ZeRO-3 shards
    records = read_metrics(run_dir)
    assert all(r["loss_scale"] is None and r["grad_norm"] == r["grad_norm"] < float("inf") for r in records)

    out = tmp_path / "export"
    cli = subprocess.run([sys.executable, "-m", "minialbert.export", str(run_dir), "--tag", "step_00000004",
                          "--out", str(out)], cwd=REPO, env=distill_env(), capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr[-3000:]
    model = AutoModelForMaskedLM.from_pretrained(out)
    assert type(model).__name__ == "MiniAlbertForMaskedLM"
    # DeepSpeed's own recovery script, shipped in the checkpoint folder, gathers the engine's fp32 partitions.
    fp32 = tmp_path / "fp32"
    script = subprocess.run([sys.executable, str(ckpts / "zero_to_fp32.py"), str(ckpts), str(fp32),
                             "--tag", "step_00000004"], env=distill_env(), capture_output=True, text=True)
    assert script.returncode == 0, script.stderr[-3000:]
    engine = torch.load(fp32 / "pytorch_model.bin", weights_only=True)
    exported = model.state_dict()
    assert set(exported) >= set(engine)
    assert_same_weights({k: exported[k] for k in engine}, engine)
    assert_same_weights(exported, AutoModelForMaskedLM.from_pretrained(run_dir / "export").state_dict())
    card = (out / "README.md").read_text()
    # Teacher and data named by their folder names, never by this machine's paths.
    for needle in (f"teacher: `{Path(teacher).name}`", "optimizer steps: 4", f"tokens seen: {records[-1]['tokens']}",
                   "## Final losses", f"loss: {records[-1]['loss']:.5f}", "## Parameters", f"`{Path(shards[0]).name}`"):
        assert needle in card, needle
    assert str(Path(teacher).parent) not in card
    assert (out / "tokenizer.json").is_file()


@needs_fp16
@pytest.mark.slow
def test_fp16_run_applies_its_steps_and_logs_the_loss_scale(world, tmp_path):
    _, teacher, shards = world
    run_dir = world[0] / "fp16"
    ds_json = tmp_path / "zero2_fp16.json"  # a loss scale that does not overflow at once: the steps are applied
    ds_json.write_text(json.dumps({"zero_optimization": {"stage": 2}, "fp16": {"initial_scale_power": 8}}))
    done = run_distill(run_dir, teacher, shards, "--max-steps", "3", "train.precision=fp16", ds_config=str(ds_json))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = read_metrics(run_dir)
    assert all(r["loss_scale"] == 256.0 and r["grad_norm"] == r["grad_norm"] < float("inf") for r in records)
    acc = _accumulator(run_dir)
    assert [(e.step, e.value) for e in acc.Scalars("train/loss_scale")] == [(s, 256.0) for s in range(1, 4)]
    AutoModelForMaskedLM.from_pretrained(run_dir / "export")


# ----------------------------------------------------------------------------- --no-resume


@pytest.mark.slow
def test_no_resume_refuses_a_non_empty_run_dir_and_touches_nothing(world, tmp_path):
    _, teacher, shards = world
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_00000004\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')

    def snapshot():
        return {str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None) for p in run_dir.rglob("*")}

    before = snapshot()
    sources = json.dumps([{"path": str(s)} for s in shards])
    command = [sys.executable, "minialbert/distill.py", "--config", "configs/distill/tiny.yaml", "--run-dir",
               str(run_dir), "--no-resume", f"teacher.path={teacher}", f"data.sources={sources}"]
    done = subprocess.run(command, cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --no-resume: run dir {run_dir} is not empty; choose another --run-dir or drop --no-resume"]
    assert snapshot() == before
