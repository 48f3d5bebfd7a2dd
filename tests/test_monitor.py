"""Monitoring and checkpoint bookkeeping without DeepSpeed: the step axis across a resume, metrics.jsonl repair,
which checkpoint folders are kept, and the stop signals. (The same behaviour end to end: tests/test_resume.py.)"""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minialbert import checkpoint as ckpt
from minialbert.monitor import Monitor, truncate_metrics

METRICS = "metrics.jsonl"


def _record(step: int) -> dict:
    return {"loss": 10.0 - step, "loss_mlm": 1.0, "loss_attention": 2.0, "loss_hidden": 3.0, "loss_output": 4.0,
            "loss_sentence": 0.0, "tokens": 100 * step, "step_tokens": 100, "lr": 1e-3, "grad_norm": 0.5, "loss_scale": None}


def _log(monitor: Monitor, steps) -> None:
    for step in steps:
        monitor.log_step(step, _record(step), {"attention": [0.1, 0.2], "hidden": [0.3, 0.4]}, samples=8, epoch=0)


def test_a_resumed_monitor_continues_the_step_axis_without_doubles(tmp_path):
    cpu = torch.device("cpu")
    first = Monitor(tmp_path, 0, {"optim.lr": 1e-3, "train.precision": "bf16"}, 1e6, 1e12, 2, cpu)
    _log(first, range(1, 6))  # steps 4 and 5 come after the checkpoint of step 3; then the run dies
    with (tmp_path / METRICS).open("a") as f:
        f.write('{"loss": 1.0, "st')  # torn by the kill
    resumed = Monitor(tmp_path, 3, {}, 1e6, 1e12, 2, cpu)
    _log(resumed, range(4, 8))
    first.close()
    resumed.close()

    assert [json.loads(line)["step"] for line in (tmp_path / METRICS).read_text().splitlines()] == list(range(1, 8))
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2
    for tag in ("loss/total", "loss/attention_recursion_1", "loss/hidden_recursion_0", "perf/tflops", "perf/mfu",
                "mem/peak_gb", "data/epoch", "train/lr", "train/grad_norm", "perf/samples_per_s", "perf/tokens_per_s"):
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, 8)), tag
    assert "train/loss_scale" not in acc.Tags()["scalars"]  # bf16 / fp32: no loss scale
    assert set(acc.PluginTagToContent("hparams")) == {"_hparams_/experiment", "_hparams_/session_start_info",
                                                      "_hparams_/session_end_info"}


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / METRICS
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    truncate_metrics(path, 4)
    assert path.read_text() == "".join(json.dumps({"step": s}) + "\n" for s in range(1, 5))
    truncate_metrics(tmp_path / "missing.jsonl", 4)  # a run that never logged: nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


def test_prune_keeps_the_last_complete_checkpoints_and_drops_incomplete_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in ((2, True), (4, True), (5, False), (6, True), (8, True)):
        folder = root / ckpt.tag_for(step)
        folder.mkdir(parents=True)
        (folder / "mp_rank_00_model_states.pt").write_bytes(b"x")
        if complete:
            (folder / ckpt.META).write_text("{}")
    (root / "step_00000004_universal").mkdir()
    ckpt._prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000006", "step_00000008"]


def test_sigterm_and_sigusr1_set_the_stop_flag_instead_of_killing():
    from minialbert.distill import STOP_SIGNALS, StopFlag

    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            flag = StopFlag()
            os.kill(os.getpid(), sig)  # handled at the next bytecode boundary
            assert flag.set, sig
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_export_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    from minialbert.export import main as export_main

    out = tmp_path / "out"
    assert export_main([str(tmp_path), "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'checkpoints'}: no complete checkpoint\n"
    (tmp_path / "checkpoints" / "step_00000004").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000004" / ckpt.META).write_text('{"step": 4}')
    assert export_main([str(tmp_path), "--tag", "step_00000005", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path / 'checkpoints' / 'step_00000005'}: no such checkpoint "
                                       f"(complete ones: step_00000004)\n")
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main([str(tmp_path), "--tag", "step_00000004", "--out", str(out)]) == 1
    assert capsys.readouterr().err == f"error: {out}: exists and is not empty; choose a new --out\n"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "out"]


def test_the_metrics_reader_skips_a_torn_last_line_and_names_a_bad_one_elsewhere(tmp_path):
    from minialbert.run_dir import RunDir

    run = RunDir(tmp_path)
    assert run.read_metrics() == []  # no run yet
    run.metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in run.read_metrics()] == [1, 2]
    run.metrics.write_text('{"step": 1}\ngarbage\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        run.read_metrics()


def test_every_log_every_steps_rank0_prints_one_summary_line(tmp_path, capsys):
    monitor = Monitor(tmp_path, 0, {}, 1e6, 1e12, 1, torch.device("cpu"), max_steps=6, log_every=2)
    _log(monitor, range(1, 7))
    monitor.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2/6", "step 4/6", "step 6/6"]
    assert "loss 8.0000; lr 1.00e-03;" in lines[0] and "MFU" in lines[0] and "600 tokens seen" in lines[2]
