"""Which checkpoint a run resumes from and exports: complete, verified against meta.json, whatever ``latest`` says
(checkpoint folders written here as a save writes them; the 2-rank runs are in test_fault_injection.py)."""

from __future__ import annotations

import json
import os
import random
import signal

import numpy as np
import pytest
import torch

from minialbert import checkpoint as ckpt
from minialbert import dist
from minialbert.config import dump_run_config, load_run_config


def write_checkpoint(run_dir, step, world_size=2, files=None, record=True):
    folder = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(step)
    folder.mkdir(parents=True)
    for name, data in (files or {f"trainer_state_rank{r}.pt": b"state%d" % r for r in range(world_size)}).items():
        (folder / name).write_bytes(data)
    meta = {"step": step, "world_size": world_size, "tokens": 10 * step}
    if record:
        meta["files"] = ckpt.file_records(folder)
    (folder / ckpt.META).write_text(json.dumps(meta))
    return folder


def test_no_complete_checkpoint_is_a_new_run(tmp_path):
    assert ckpt.resume_tag(tmp_path) is None
    (ckpt.checkpoint_root(tmp_path) / "step_00000004").mkdir(parents=True)  # a save that never completed
    assert ckpt.resume_tag(tmp_path) is None


def test_the_newest_complete_checkpoint_is_found_without_latest(tmp_path):
    write_checkpoint(tmp_path, 2)
    write_checkpoint(tmp_path, 4)
    (ckpt.checkpoint_root(tmp_path) / "step_00000006").mkdir()  # incomplete
    assert not (ckpt.checkpoint_root(tmp_path) / ckpt.LATEST).exists()
    tag, meta = ckpt.resume_tag(tmp_path)
    assert (tag, meta["step"]) == ("step_00000004", 4)
    (ckpt.checkpoint_root(tmp_path) / ckpt.LATEST).write_text("step_00000002\n")  # a stale pointer changes nothing
    assert ckpt.resume_tag(tmp_path)[0] == "step_00000004"


@pytest.mark.parametrize("damage, problem", [
    (lambda p: p.write_bytes(p.read_bytes()[:-2]), "4 bytes, expected 6 (truncated or overwritten)"),
    (lambda p: p.write_bytes(b"STATE1"), "sha256 differs from meta.json (damaged)"),
    (lambda p: p.unlink(), "missing"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(tmp_path, capsys, damage, problem):
    write_checkpoint(tmp_path, 2)
    newest = write_checkpoint(tmp_path, 4)
    damage(newest / "trainer_state_rank1.pt")
    tag, _ = ckpt.resume_tag(tmp_path)
    assert tag == "step_00000002"
    assert capsys.readouterr().out == (f"warning: checkpoint step_00000004 is damaged ({newest / 'trainer_state_rank1.pt'}: "
                                       f"{problem}); using step_00000002\n")


def test_none_usable_is_one_line_naming_the_files(tmp_path):
    for step in (2, 4):
        (write_checkpoint(tmp_path, step) / "trainer_state_rank0.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.resume_tag(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no usable checkpoint in {ckpt.checkpoint_root(tmp_path)}: ")
    assert "step_00000004/trainer_state_rank0.pt: 0 bytes, expected 6" in message
    assert "step_00000002/trainer_state_rank0.pt: 0 bytes" in message and "--restart" in message


def test_checkpoints_saved_before_files_were_recorded_still_resume(tmp_path):
    write_checkpoint(tmp_path, 2, record=False)
    assert ckpt.resume_tag(tmp_path)[0] == "step_00000002"


def test_pruning_keeps_damaged_checkpoints_out_of_the_count(tmp_path):
    root = ckpt.checkpoint_root(tmp_path)
    for step in (2, 4, 6):
        write_checkpoint(tmp_path, step)
    (root / "step_00000006").rename(root / ("step_00000006" + ckpt.DAMAGED))
    ckpt._prune(root, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == ["step_00000002", "step_00000004", "step_00000006.damaged"]


def test_a_second_ctrl_c_aborts_at_once():
    from minialbert.distill import STOP_SIGNALS, StopFlag

    saved = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        flag = StopFlag()
        signal.raise_signal(signal.SIGINT)  # the first: finish the step, save, exit 75
        assert flag.set
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        flag.ignore_from_now()  # after the save: later SIGTERMs cannot change the exit code
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- trainer state: no code on load


class RunsCode:
    """What a hostile trainer_state file can hold: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_resumable(run_dir, rank_state, cfg):
    """A complete, verifying checkpoint of one rank whose trainer state is ``rank_state`` (saved as save() does)."""
    folder = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(2)
    folder.mkdir(parents=True)
    torch.save(rank_state, folder / "trainer_state_rank0.pt")
    meta = {"step": 2, "world_size": 1, "tokens": 20, "config": dump_run_config(cfg),
            "files": ckpt.file_records(folder)}
    (folder / ckpt.META).write_text(json.dumps(meta))
    return folder


STREAM = {"samples_consumed": 16, "epoch": 0, "seed": 1, "samples_per_epoch": 40, "quota": [30, 10]}


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), torch.randn(2).tolist()


def test_a_trainer_state_that_would_run_code_is_refused(tmp_path):
    cfg = load_run_config()
    marker = tmp_path / "MARKER"
    state_path = write_resumable(tmp_path / "run", {"stream": STREAM, "rng": RunsCode(marker)}, cfg) / \
        "trainer_state_rank0.pt"
    assert b"system" in state_path.read_bytes()  # the file really holds the call
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.prepare_resume(tmp_path / "run", cfg)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{state_path}: refused: it holds a reference to ")
    assert "system" in message and "--restart" in message
    assert not marker.exists()


def test_rng_and_stream_state_survive_save_and_a_weights_only_load_bit_for_bit(tmp_path):
    cfg = load_run_config()
    dist.seed_everything(7, 0)
    draws()  # mid-stream, not at a fresh seed
    random.gauss(0, 1), np.random.standard_normal()  # cached Gaussians are part of the state too
    state = {"stream": STREAM, "rng": dist.rng_state()}
    expected = draws()
    write_resumable(tmp_path / "run", state, cfg)
    resume = ckpt.prepare_resume(tmp_path / "run", cfg)
    assert resume.step == 2 and resume.rank_state["stream"] == STREAM
    dist.seed_everything(123, 0)
    dist.set_rng_state(resume.rank_state["rng"])
    assert draws() == expected


def test_trainer_states_of_older_runs_still_resume(tmp_path):
    """Saved before the RNG states were plain: numpy's state is a (name, uint32 array, ...) tuple."""
    dist.seed_everything(3, 0)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    expected = draws()
    path = tmp_path / "trainer_state_rank0.pt"
    torch.save({"stream": STREAM, "rng": old}, path)
    state = ckpt.load_rank_state(path)
    dist.set_rng_state(state["rng"])
    assert state["stream"] == STREAM and draws() == expected
