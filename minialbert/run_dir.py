"""A run dir and the names of everything a run writes into it: the one place they are spelled.

    RUN_DIR/checkpoints/      sharded checkpoints, step_XXXXXXXX/ + latest (minialbert.checkpoint owns the inside)
    RUN_DIR/metrics.jsonl     one JSON record per optimizer step (minialbert.monitor)
    RUN_DIR/tensorboard/      TensorBoard event files (minialbert.monitor)
    RUN_DIR/config.yaml       the resolved run config
    RUN_DIR/student_config/   the student's config.json (export rebuilds the model from it)
    RUN_DIR/export/           the Hugging Face folder written at the end (minialbert.export)

``--restart`` removes exactly these and nothing else a user may have put beside them.
"""

from __future__ import annotations

import json
from pathlib import Path


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def student_config(self) -> Path:
        return self.path / "student_config"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def outputs(self) -> tuple[Path, ...]:
        """Everything a run writes here (what ``--restart`` removes)."""
        return self.checkpoints, self.metrics, self.tensorboard, self.config, self.student_config, self.export

    def read_metrics(self) -> list[dict]:
        return read_metrics(self.metrics)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl ([] when there is none yet). A last line torn by a kill in the middle of its
    write is skipped; a bad line elsewhere is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({err.msg})") from None
    return records
