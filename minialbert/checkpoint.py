"""Checkpoints of a run dir: ``RUN_DIR/checkpoints/step_XXXXXXXX/`` plus a ``latest`` pointer.

Each checkpoint holds the engine's ZeRO shards (DeepSpeed's layout, so its tools work on it), one
``trainer_state_rank{r}.pt`` per rank (data-reader state, RNG states: ints, lists and tensors only, read with
``torch.load(weights_only=True)`` so that a run dir from elsewhere cannot run code through them) and ``meta.json``
(step, tokens seen, world size, loss scale, the resolved config, and the size and sha256 of every file of the
checkpoint). Saving is collective: every rank writes its files, the ranks agree that all of them succeeded, then
rank 0 writes ``meta.json`` (so a folder without it is incomplete) and moves ``latest`` atomically. A crash in the
middle of a save therefore leaves the previous checkpoint loadable; the incomplete folder is deleted by the next
save. A save that fails (a full disk) removes its folder and raises ``CheckpointError`` on every rank. The last k
complete checkpoints are kept. The teacher is never in a checkpoint (it is not in the engine). docs/checkpoints.md
describes the layout.

Resume never trusts ``latest`` alone: it takes the newest complete checkpoint whose files match ``meta.json``
(sizes and checksums), whether or not ``latest`` exists or names it. A damaged one is renamed
``step_XXXXXXXX.damaged`` (kept for inspection, never loaded or pruned) with a warning, and the previous one is
used; with none usable the run stops with one line naming the files.

Crash rehearsal: with ``MINIALBERT_FAULT_AFTER_SHARDS=STEP`` in the environment, every rank SIGKILLs itself while
saving the checkpoint of step STEP, after writing its files and before the barrier that lets ``latest`` move —
the worst moment for a crash. The tests use it; on a cluster it shows that a crash mid-save loses nothing.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_prep import files

from . import dist
from .config import ConfigError, RunConfig, dump_run_config, run_config_from_yaml
from .engine import convert_to_universal, has_partitions, load_shards, loss_scale, save_shards
from .run_dir import RunDir

LATEST = "latest"
META = "meta.json"
FAULT_AFTER_SHARDS = "MINIALBERT_FAULT_AFTER_SHARDS"
STEP_FOLDER = re.compile(r"step_\d{8}")
DAMAGED = ".damaged"
# Fields that fix the student's shapes or the data it reads: a resumed run must keep them.
RESUME_FIXED = {
    "teacher": ("path", "layer_map"),
    "student": ("num_recursions", "embedding_size", "hidden_size", "num_attention_heads", "intermediate_size",
                "use_adapters", "adapter_reduction_factor", "recursion_delta_rank"),
    "data": ("sources", "mlm_probability", "whole_word_mask"),
    "train": ("seed",),
}


class CheckpointError(Exception):
    """A checkpoint could not be written or none can be resumed from; the message names the path."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return RunDir(run_dir).checkpoints


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Step folders with ``meta.json`` (a save that completed), oldest first."""
    root = checkpoint_root(run_dir)
    return sorted(p for p in root.glob("step_*") if STEP_FOLDER.fullmatch(p.name) and (p / META).is_file())


def file_records(folder: Path) -> dict[str, dict]:
    """{relative path: {size, sha256}} of every file in a checkpoint folder but meta.json."""
    return {str(p.relative_to(folder)): files.file_record(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != META}


def verify(folder: Path) -> str | None:
    """What is wrong with a complete checkpoint's files (one line naming the file), or None when they match
    ``meta.json``. Checkpoints saved before meta.json recorded files are checked for their rank states only."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError) as err:
        return f"{folder / META}: unreadable ({err})"
    expected = meta.get("files") or {f"trainer_state_rank{r}.pt": None for r in range(meta.get("world_size", 1))}
    for name, record in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        problem = None if record is None else files.check_record(path, record, source=META)
        if problem:
            return problem
    return None


def is_disk_full(folder: Path) -> bool:
    """Whether writing into ``folder`` (or its nearest existing parent) fails for lack of space: torch and DeepSpeed
    report a full disk as 'iostream error' or 'unexpected pos', not ENOSPC, so ask the disk."""
    folder = next(p for p in (folder, *folder.parents) if p.is_dir())
    probe = folder / f".space_probe{os.getpid()}"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as err:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)


def describe_write_error(path: Path, err: BaseException) -> str:
    """One line for a failed write under ``path`` (files.describe_write_error); 'no space left on device' also
    when torch or DeepSpeed hid the full disk behind another error (``is_disk_full``)."""
    if not files.is_full_disk_error(err) and is_disk_full(path):
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return files.describe_write_error(path, err)


def read_meta(run_dir: str | Path, tag: str) -> dict:
    root = checkpoint_root(run_dir)
    if not (root / tag).is_dir():
        have = ", ".join(p.name for p in complete_checkpoints(run_dir)) or "none"
        raise FileNotFoundError(f"{root / tag}: no such checkpoint (complete ones: {have})")
    path = root / tag / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint metadata missing (incomplete checkpoint)")
    return json.loads(path.read_text())


def save(engine, run_dir: str | Path, step: int, meta: dict, rank_state: dict, keep_last: int) -> str:
    """Collective save of step ``step``. ``meta`` is written by rank 0, ``rank_state`` by every rank. On failure
    (e.g. a full disk) the folder is removed, ``latest`` still names the previous checkpoint, and every rank raises
    ``CheckpointError`` with one line naming the path."""
    root = checkpoint_root(run_dir)
    tag = tag_for(step)
    folder = root / tag
    if dist.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if folder.exists():
            shutil.rmtree(folder)  # left half-written by a crash, or by a timeline abandoned for an older checkpoint
    dist.barrier()
    error = None
    try:
        save_shards(engine, root, tag)
        with files.atomic_write(folder / f"trainer_state_rank{dist.rank()}.pt") as tmp:
            torch.save(rank_state, tmp)
    except Exception as err:  # torch/DeepSpeed report a full disk as RuntimeError
        error = describe_write_error(folder, err)
    if os.environ.get(FAULT_AFTER_SHARDS) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)  # crash rehearsal (module doc): files written, `latest` not moved
    # Every rank has written everything (or failed): now the checkpoint may be declared complete.
    _agree_or_raise(error, folder, f"{folder}: another rank could not write its files")
    if dist.rank() == 0:
        try:
            record = {**meta, "step": step, "world_size": dist.world_size(), "files": file_records(folder)}
            files.write_text_atomic(folder / META, json.dumps(record, indent=2))
            files.write_text_atomic(root / LATEST, tag + "\n")
            _prune(root, keep_last)
        except OSError as err:
            error = describe_write_error(folder, err)
    _agree_or_raise(error, folder, f"{folder}: rank 0 could not complete the checkpoint")
    return tag


class Checkpointer:
    """When the training loop saves, and what a checkpoint holds besides the engine's shards.

    Saves every ``checkpoint.every_steps`` steps, every ``checkpoint.every_minutes`` minutes, at the last step, and
    when a stop signal reached any rank; the ranks decide together (one collective per step), so they save together.
    A checkpoint's metadata: tokens seen, the loss scale, the resolved config; each rank's resume state: the data
    reader's position and the RNG streams."""

    def __init__(self, engine, run_dir: str | Path, cfg: RunConfig, stream):
        self.engine, self.run_dir, self.cfg, self.stream = engine, RunDir(run_dir), cfg, stream
        self.last_save = time.monotonic()

    def after_step(self, step: int, tokens: int, stop_requested: bool, log_error: OSError | None) -> tuple[bool, bool]:
        """Collective, after every optimizer step: saves when due; returns (saved, stop now). A rank that could not
        write the metrics stops every rank (``CheckpointError``)."""
        every, last = self.cfg.checkpoint, self.cfg.train.max_steps
        minutes_due = bool(every.every_minutes) and time.monotonic() - self.last_save >= 60 * every.every_minutes
        preempted, minutes_due, log_failed = dist.any_rank(stop_requested, minutes_due, log_error is not None)
        if log_failed:
            raise CheckpointError(describe_write_error(self.run_dir.metrics, log_error) if log_error
                                  else "rank 0 could not write the run's metrics")
        due = bool(every.every_steps and step % every.every_steps == 0) or minutes_due
        if not (preempted or due or step == last):
            return False, False
        self.save(step, tokens)
        return True, preempted and step < last  # on the last step: finish (export, exit 0) instead

    def save(self, step: int, tokens: int) -> str:
        meta = {"tokens": tokens, "loss_scale": loss_scale(self.engine), "config": dump_run_config(self.cfg)}
        rank_state = {"stream": self.stream.state_dict(), "rng": dist.rng_state()}
        tag = save(self.engine, self.run_dir.path, step, meta, rank_state, self.cfg.checkpoint.keep_last)
        self.last_save = time.monotonic()
        return tag


def _agree_or_raise(error: str | None, folder: Path, others: str) -> None:
    """Collective: when any rank failed, rank 0 removes the folder and every rank raises (its own message, or
    ``others``)."""
    if dist.any_rank(error is not None)[0]:
        if dist.rank() == 0:
            shutil.rmtree(folder, ignore_errors=True)
            _remove_pointer_to(folder)
        raise CheckpointError(f"{error or others}; the previous checkpoint is intact")


def _remove_pointer_to(folder: Path) -> None:
    pointer = folder.parent / LATEST
    if pointer.is_file() and pointer.read_text().strip() == folder.name:
        pointer.unlink()


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (and their universal conversions); delete older ones
    and incomplete folders (no meta.json: a crash during their save; no save is running now). Damaged ones
    (renamed ``.damaged``) are left for inspection."""
    folders = sorted(p for p in root.glob("step_*") if p.is_dir() and STEP_FOLDER.fullmatch(p.name))
    complete = [p for p in folders if (p / META).is_file()]
    doomed = [p for p in folders if p not in complete] + complete[:-max(keep_last, 1)]
    for path in doomed:
        for folder in (path, path.with_name(f"{path.name}_universal")):
            shutil.rmtree(folder, ignore_errors=True)


def resume_tag(run_dir: str | Path) -> tuple[str, dict] | None:
    """(tag, meta) of the newest complete checkpoint whose files verify, or None when the run dir has no complete
    checkpoint. Damaged ones are skipped with a warning; ``CheckpointError`` when none verifies. Reads only."""
    complete = complete_checkpoints(run_dir)
    problems = []
    for folder in reversed(complete):
        problem = verify(folder)
        if problem is None:
            if problems:
                print(f"warning: {'; '.join(problems)}; using {folder.name}", flush=True)
            return folder.name, json.loads((folder / META).read_text())
        problems.append(f"checkpoint {folder.name} is damaged ({problem})")
    if problems:
        raise CheckpointError(f"no usable checkpoint in {checkpoint_root(run_dir)}: {'; '.join(problems)}; "
                              f"--restart starts the run over")
    return None


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from."""

    tag: str
    meta: dict
    universal: bool
    """The rank count changed: the engine loads the checkpoint's universal conversion (``load_universal``)."""
    rank_state: dict
    """This rank's ``trainer_state_rank{r}.pt`` (rank 0's when the run had fewer ranks): stream state, RNG states."""

    @property
    def step(self) -> int:
        return self.meta["step"]


NEW_RUN, NO_CHECKPOINT = -1, -2


def prepare_resume(run_dir: str | Path, cfg: RunConfig, restart: bool = False) -> Resume | None:
    """Collective, before the engine exists: the checkpoint to resume from (None: a new run). Rank 0 chooses
    (``resume_tag``), sets damaged newer ones aside, converts to DeepSpeed's universal format when the rank count
    changed; every rank then checks that the config keeps what the checkpoint fixed.

    ``restart``: remove the run's outputs first (rank 0 says which) and start over."""
    run_dir = Path(run_dir)
    step, error = NEW_RUN, ""
    if dist.rank() == 0:
        try:
            if restart:
                _remove_run_outputs(run_dir)
            found = resume_tag(run_dir)
            if found is not None:
                _set_aside_newer_than(run_dir, found[1]["step"])
                step = found[1]["step"]
        except (CheckpointError, OSError) as err:
            step, error = NO_CHECKPOINT, str(err)
    step = dist.from_rank0(step)
    if step == NO_CHECKPOINT:
        raise CheckpointError(error or "rank 0 found no usable checkpoint")
    if step == NEW_RUN:
        return None
    tag = tag_for(step)
    meta = read_meta(run_dir, tag)
    _check_unchanged(run_config_from_yaml(meta["config"]), cfg, checkpoint_root(run_dir) / tag)
    # Without ZeRO (stage 0) every rank loads the one full copy, on any rank count: nothing to convert.
    universal = meta["world_size"] != dist.world_size() and has_partitions(checkpoint_root(run_dir) / tag)
    if universal:
        failed = ""
        if dist.rank() == 0:
            try:
                convert_to_universal(checkpoint_root(run_dir), tag)
            except (OSError, RuntimeError) as err:
                failed = str(err)
        if dist.any_rank(bool(failed))[0]:
            raise CheckpointError(failed or "rank 0 could not convert the checkpoint to the universal format")
    own = checkpoint_root(run_dir) / tag / f"trainer_state_rank{dist.rank()}.pt"
    state_path = own if own.is_file() else own.with_name("trainer_state_rank0.pt")
    state, problem = None, ""
    try:
        state = load_rank_state(state_path)
    except CheckpointError as err:
        problem = str(err)
    if dist.any_rank(bool(problem))[0]:
        raise CheckpointError(problem or f"{checkpoint_root(run_dir) / tag}: another rank refused its trainer state")
    return Resume(tag, meta, universal, state)


# Checkpoints saved before the RNG states were made plain hold numpy's state as an array; these globals rebuild
# arrays and nothing else (an object array's items still pass the weights_only unpickler).
_NUMPY_ARRAY = [np.empty(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_rank_state(path: Path) -> dict:
    """A ``trainer_state_rank{r}.pt``, read without running code from it: ``CheckpointError`` (one line) for a file
    that would need more than tensors, numbers, strings, lists, dicts and numpy arrays."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        what = f"a reference to {found.group(1)}" if found else "objects other than tensors and plain values"
        raise CheckpointError(f"{path}: refused: it holds {what} (loading it could run code); start over with "
                              f"--restart or a new --run-dir") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: unreadable ({reason}); start over with --restart or a new --run-dir") from None


def _remove_run_outputs(run_dir: Path) -> None:
    present = [path for path in RunDir(run_dir).outputs() if path.exists()]
    if present:
        print(f"--restart: removing {', '.join(map(str, present))}", flush=True)
    for path in present:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _set_aside_newer_than(run_dir: Path, step: int) -> None:
    """Complete checkpoints after the one resumed from failed verification: rename them so that they are never
    loaded, pruned as the newest, or overwritten by the resumed run's saves."""
    for folder in complete_checkpoints(run_dir):
        if int(folder.name.removeprefix("step_")) > step:
            target = folder.with_name(folder.name + DAMAGED)
            shutil.rmtree(target, ignore_errors=True)
            folder.rename(target)


def _check_unchanged(saved: RunConfig, cfg: RunConfig, folder: Path) -> None:
    changed = []
    for section, names in RESUME_FIXED.items():
        for name in names:
            before, now = getattr(getattr(saved, section), name), getattr(getattr(cfg, section), name)
            if before != now:
                changed.append(f"{section}.{name} {_short(before)} -> {_short(now)}")
    if changed:
        raise ConfigError(f"{folder} was made with another model or data: {'; '.join(changed)}; resume with the "
                          f"checkpoint's values, or start over with --restart or a new --run-dir")


def _short(value: object) -> str:
    if isinstance(value, list) and value and hasattr(value[0], "path"):
        value = [f"{v.path} (weight {v.weight})" for v in value]
    return repr(value)


def restore(engine, run_dir: str | Path, resume: Resume | None, stream, seed: int) -> tuple[int, int]:
    """Everything a run continues from, in one place: engine shards (optimizer, LR schedule), the data stream's
    position and this rank's RNG streams; returns (step, tokens seen). A new run (``resume`` None) seeds the RNGs.

    Nothing may draw from an RNG between this call and the first step: the restored streams are those the
    uninterrupted run had at this step. Rank counts that changed get fresh RNG streams (seeded by the step)."""
    if resume is None:
        dist.seed_everything(seed, dist.rank())
        return 0, 0
    root = checkpoint_root(run_dir)
    load_shards(engine, root, f"{resume.tag}_universal" if resume.universal else resume.tag)
    state = resume.rank_state
    stream.load_state_dict(state["stream"])
    if resume.universal or "rng" not in state:
        dist.seed_everything(seed + resume.step, dist.rank())
    else:
        dist.set_rng_state(state["rng"])
    dist.print0(f"resumed from {root / resume.tag} at step {resume.step}")
    return resume.step, resume.meta["tokens"]
