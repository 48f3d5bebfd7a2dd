"""Checkpoints of a run dir: ``RUN_DIR/checkpoints/step_XXXXXXXX/`` plus a ``latest`` pointer.

Each checkpoint holds the engine's ZeRO shards (DeepSpeed's layout, so its tools work on it), one
``trainer_state_rank{r}.pt`` per rank (data-reader state, RNG states) and ``meta.json`` (step, tokens seen, world
size, loss scale, the resolved config). Saving is collective: every rank writes its files, a barrier, then rank 0
writes ``meta.json`` (so a folder without it is incomplete) and moves ``latest`` atomically. A crash in the
middle of a save therefore leaves the previous checkpoint latest and loadable; the incomplete folder is deleted
by the next save. The last k complete checkpoints are kept. The teacher is never in a checkpoint (it is not in
the engine). docs/checkpoints.md describes the layout.

Crash rehearsal: with ``MINIALBERT_FAULT_AFTER_SHARDS=STEP`` in the environment, every rank SIGKILLs itself while
saving the checkpoint of step STEP, after writing its files and before the barrier that lets ``latest`` move —
the worst moment for a crash. The tests use it; on a cluster it shows that a crash mid-save loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch

from . import dist, engine as ds

LATEST = "latest"
META = "meta.json"
FAULT_AFTER_SHARDS = "MINIALBERT_FAULT_AFTER_SHARDS"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_tag(run_dir: str | Path) -> str | None:
    pointer = checkpoint_root(run_dir) / LATEST
    return pointer.read_text().strip() if pointer.is_file() else None


def read_meta(run_dir: str | Path, tag: str) -> dict:
    root = checkpoint_root(run_dir)
    if not (root / tag).is_dir():
        have = ", ".join(sorted(p.name for p in root.glob("step_*") if (p / META).is_file())) or "none"
        raise FileNotFoundError(f"{root / tag}: no such checkpoint (complete ones: {have})")
    path = root / tag / META
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint metadata missing (incomplete checkpoint)")
    return json.loads(path.read_text())


def save(engine, run_dir: str | Path, step: int, meta: dict, rank_state: dict, keep_last: int) -> str:
    """Collective save of step ``step``. ``meta`` is written by rank 0, ``rank_state`` by every rank."""
    root = checkpoint_root(run_dir)
    tag = tag_for(step)
    if dist.rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if (root / tag).exists() and latest_tag(run_dir) != tag:
            shutil.rmtree(root / tag)  # left half-written by a crash
    dist.barrier()
    ds.save_shards(engine, root, tag)
    state_path = root / tag / f"trainer_state_rank{dist.rank()}.pt"
    tmp = state_path.with_name(state_path.name + ".tmp")
    torch.save(rank_state, tmp)
    os.replace(tmp, state_path)
    if os.environ.get(FAULT_AFTER_SHARDS) == str(step):
        os.kill(os.getpid(), signal.SIGKILL)  # crash rehearsal (module doc): files written, `latest` not moved
    dist.barrier()  # every rank has written everything: now the checkpoint may be declared complete
    if dist.rank() == 0:
        _atomic_write(root / tag / META, json.dumps({**meta, "step": step, "world_size": dist.world_size()}, indent=2))
        _atomic_write(root / LATEST, tag + "\n")
        _prune(root, keep_last)
    dist.barrier()
    return tag


def _prune(root: Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints (and their universal conversions); delete older ones
    and incomplete folders (no meta.json: a crash during their save; no save is running now)."""
    folders = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith("_universal"))
    complete = [p for p in folders if (p / META).is_file()]
    doomed = [p for p in folders if p not in complete] + complete[:-max(keep_last, 1)]
    for path in doomed:
        for folder in (path, path.with_name(f"{path.name}_universal")):
            shutil.rmtree(folder, ignore_errors=True)


def resume_tag(run_dir: str | Path) -> tuple[str, dict] | None:
    """(tag, meta) of the checkpoint to resume from, or None when the run dir has none."""
    tag = latest_tag(run_dir)
    return None if tag is None else (tag, read_meta(run_dir, tag))


@dataclass(frozen=True)
class Resume:
    """The checkpoint a run continues from."""

    tag: str
    meta: dict
    universal: bool
    """The rank count changed: the engine loads the checkpoint's universal conversion (``load_universal``)."""

    @property
    def step(self) -> int:
        return self.meta["step"]


def prepare_resume(run_dir: str | Path) -> Resume | None:
    """Collective, before the engine exists: the checkpoint to resume from (None: a new run), converted to
    DeepSpeed's universal format by rank 0 when the rank count changed."""
    found = resume_tag(run_dir)
    if found is None:
        return None
    tag, meta = found
    universal = meta["world_size"] != dist.world_size()
    if universal:
        if dist.rank() == 0:
            ds.convert_to_universal(checkpoint_root(run_dir), tag)
        dist.barrier()
    return Resume(tag, meta, universal)


def restore(engine, run_dir: str | Path, resume: Resume | None, stream, seed: int) -> tuple[int, int]:
    """Everything a run continues from, in one place: engine shards (optimizer, LR schedule), the data stream's
    position and this rank's RNG streams; returns (step, tokens seen). A new run (``resume`` None) seeds the RNGs.

    Nothing may draw from an RNG between this call and the first step: the restored streams are those the
    uninterrupted run had at this step. Rank counts that changed get fresh RNG streams (seeded by the step)."""
    if resume is None:
        dist.seed_everything(seed, dist.rank())
        return 0, 0
    root = checkpoint_root(run_dir)
    ds.load_shards(engine, root, f"{resume.tag}_universal" if resume.universal else resume.tag)
    own = root / resume.tag / f"trainer_state_rank{dist.rank()}.pt"
    state = torch.load(own if own.is_file() else root / resume.tag / "trainer_state_rank0.pt", weights_only=False)
    stream.load_state_dict(state["stream"])
    if resume.universal or "rng" not in state:
        dist.seed_everything(seed + resume.step, dist.rank())
    else:
        dist.set_rng_state(state["rng"])
    dist.print0(f"resumed from {root / resume.tag} at step {resume.step}")
    return resume.step, resume.meta["tokens"]
