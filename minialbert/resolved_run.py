"""A run worked out once, before a weight is loaded or a rank started: its DeepSpeed config for the world size,
the teacher's shape (family, MLM head, layer map), the student's architecture, the shards' row length and the
FLOPs of one optimizer step. The plan (``--check``), the build and the live MFU all read this one resolution, so
what ``--check`` prints is what the run does.

Reads the teacher's ``config.json`` and the shards' ``manifest.json`` where they are present (no weights, no
rows); where one is missing, what depends on it is None and the plan says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import flops
from .config import RunConfig
from .configuration_minialbert import MiniAlbertConfig
from .engine import build_ds_config
from .student import architecture
from .teacher import TeacherShape, read_teacher


@dataclass
class ResolvedRun:
    cfg: RunConfig
    world_size: int
    ds_config: dict
    """The DeepSpeed config: the JSON's mechanics plus the run config's decisions for this world size."""
    seq_len: int | None = None
    """The longest row of the shard folders (their manifests); None: a manifest is missing or unreadable."""
    teacher: TeacherShape | None = None
    """None: no ``config.json`` at ``teacher.path`` (a plan's resolution only)."""
    student: MiniAlbertConfig | None = None
    """The architecture the run trains (None without the teacher's shape)."""
    on_cuda: bool = False

    @property
    def accumulation(self) -> int:
        return self.ds_config["gradient_accumulation_steps"]

    @property
    def flops_per_step(self) -> int | None:
        """Model FLOPs of one optimizer step, of what runs (``flops.run_step_flops``); None when unknown."""
        if self.teacher is None or self.seq_len is None:
            return None
        return flops.run_step_flops(self.cfg, self.teacher.config, self.student, self.seq_len,
                                    self.teacher.has_mlm_head, self.on_cuda)


def resolve_run(cfg: RunConfig, ds_json: str | Path, world_size: int, on_cuda: bool,
                need_teacher: bool = True) -> ResolvedRun:
    """``ConfigError`` / ``TeacherError`` name the field or file that does not fit. ``need_teacher=False`` (a
    plan): without a ``config.json`` at ``teacher.path`` what depends on the teacher stays None."""
    run = ResolvedRun(cfg, world_size, build_ds_config(cfg, ds_json, world_size, on_cuda), shard_seq_len(cfg),
                      on_cuda=on_cuda)
    if need_teacher or (Path(cfg.teacher_path()) / "config.json").is_file():
        run.teacher = read_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map)
        run.student = architecture(cfg, run.teacher)
    return run


def shard_seq_len(cfg: RunConfig) -> int | None:
    """The longest row of the configured shard folders (their manifests), or None when one is missing or
    unreadable (reading the shards then says which and why)."""
    lengths = []
    for source in cfg.data.sources:
        try:
            lengths.append(int(json.loads((Path(source.path) / "manifest.json").read_text())["seq_len"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return max(lengths)
