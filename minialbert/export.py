"""Turn any checkpoint of a run (ZeRO-1/2/3) into a Hugging Face folder with the tokenizer and a model card.

    python -m minialbert.export RUN_DIR [--tag TAG] --out DIR

TAG defaults to the run's latest checkpoint. The folder loads with ``AutoModelForMaskedLM.from_pretrained`` after
``import minialbert``. A run's final ``RUN_DIR/export/`` is produced the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from . import checkpoint as ckpt
from .config import run_config_from_yaml
from .losses import RECORD_KEYS


def _final_losses(run_dir: Path, step: int) -> dict:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    for line in reversed(path.read_text().splitlines()):
        record = json.loads(line)
        if record["step"] == step:
            return {k: record[k] for k in RECORD_KEYS}
    return {}


def _model_card(run_dir: Path, tag: str, meta: dict, cfg, teacher: str, counts: dict) -> str:
    manifests = []
    for source in cfg.data.sources:
        m = Path(source.path) / "manifest.json"
        info = json.loads(m.read_text()) if m.is_file() else {}
        tok = info.get("tokenizer", {})
        manifests.append(f"- `{source.path}` (weight {source.weight}; tokenizer {tok.get('name', '?')}, "
                         f"fingerprint {str(tok.get('fingerprint', '?'))[:16]})")
    losses = _final_losses(run_dir, meta["step"])
    lines = [
        "---", "library_name: transformers", "tags: [minialbert, distillation, recursive-transformer]", "---", "",
        "# MiniALBERT student", "",
        "A recursive student (one shared ALBERT-style layer applied N times, per-recursion adapters) distilled with "
        "minialbert. Load with `import minialbert; AutoModelForMaskedLM.from_pretrained(this_folder)`.", "",
        f"- teacher: `{teacher}` (layers {cfg.teacher.layer_map or 'uniform'})",
        f"- checkpoint: `{run_dir / 'checkpoints' / tag}`",
        f"- optimizer steps: {meta['step']}", f"- tokens seen: {meta['tokens']}",
        f"- global batch: {cfg.train.global_batch_size}, precision {cfg.train.precision}, loss mode {cfg.loss.mode}",
        "", "## Data", *manifests, "", "## Final losses", "",
        *(f"- {k}: {v:.5f}" for k, v in losses.items()), "", "## Parameters (unique, by part)", "",
        *(f"- {k}: {v:,}" for k, v in counts.items()), "",
    ]
    return "\n".join(lines)


def export_checkpoint(run_dir: str | Path, tag: str | None, out: str | Path, replace: bool = False) -> Path:
    """Write the student of checkpoint ``tag`` (None: the newest complete one whose files verify) to ``out``,
    atomically: on any failure (a damaged checkpoint, a full disk) nothing is left at ``out``."""
    from transformers import AutoTokenizer

    from . import engine as ds
    from .configuration_minialbert import MiniAlbertConfig
    from .modeling_minialbert import MiniAlbertForMaskedLM
    from .params import count_parameters

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not replace:
        raise FileExistsError(f"{out}: exists and is not empty; choose a new --out")
    if tag is None:
        found = ckpt.resume_tag(run_dir)  # the newest complete checkpoint whose files verify
        if found is None:
            raise FileNotFoundError(f"{ckpt.checkpoint_root(run_dir)}: no complete checkpoint")
        tag = found[0]
    meta = ckpt.read_meta(run_dir, tag)
    problem = ckpt.verify(ckpt.checkpoint_root(run_dir) / tag)
    if problem:
        raise ckpt.CheckpointError(f"checkpoint {tag} is damaged ({problem})")
    cfg = run_config_from_yaml(meta["config"])
    config = MiniAlbertConfig.from_pretrained(run_dir / "student_config")
    model = MiniAlbertForMaskedLM(config)
    state = ds.consolidated_state_dict(ckpt.checkpoint_root(run_dir), tag)
    model.load_state_dict(state, strict=True)
    teacher = cfg.teacher_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(teacher).save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(run_dir, tag, meta, cfg, teacher, count_parameters(model)))
    except Exception as err:  # nothing half-written is left behind; a full disk is named as such
        message = ckpt.describe_write_error(out, err)
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(message) from err
    if out.exists():
        old = out.with_name(f".{out.name}.old{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minialbert.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--tag", help="checkpoint tag (default: the latest)")
    p.add_argument("--out", required=True, help="new folder for the Hugging Face model")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(args.run_dir, args.tag, args.out)
    except (OSError, ValueError, ckpt.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.run_dir} ({args.tag or 'latest'}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
