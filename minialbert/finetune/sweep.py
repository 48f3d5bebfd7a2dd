"""The learning-rate x seed sweep: one ``result.json`` per run, ``summary.json`` with mean ± std per rate.

Layout under ``--out DIR``::

    DIR/summary.json                      the sweep: per learning rate mean/std over seeds, the best rate
    DIR/lr0.0003-seed1/result.json        one run: settings, parameter counts, metrics, timings
    DIR/lr0.0003-seed1/adapters/          weights (--save best|all): adapters + head, or model/ for full tuning

The best rate is the one with the highest mean score over seeds (score: the mean of the task's metrics on
the selection split: GLUE validation, NER devel).
"""

from __future__ import annotations

import json
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from data_prep.files import write_json_atomic

from . import InputError


@dataclass
class SweepSpec:
    """What is swept and how it is labelled in reports."""

    kind: str  # "glue" or "ner"
    task: str  # GLUE task name or NER dataset name (a report column)
    model: str  # the model folder
    model_name: str  # a report row, with the mode
    mode: str  # "full" or "adapters"
    lrs: list[float]
    seeds: list[int]
    out: Path
    save: str  # "none", "best" (the single best run's weights) or "all"
    report_metrics: list[str]  # metric keys the report table shows, in order
    settings: dict = field(default_factory=dict)  # epochs, batch size, ...: written into every JSON


@dataclass
class RunResult:
    metrics: dict[str, float]
    score: float  # higher is better; picks the learning rate and the best run
    info: dict  # parameter counts, training statistics
    save: Callable[[Path], Path]  # writes this run's weights into a folder, returns it


def write_json(path: Path, obj: dict) -> None:
    """Atomic: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj, indent=2)


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(header: dict, report_metrics: list[str], settings: dict, records: list[dict], best_run: dict) -> dict:
    """``summary.json``: per learning rate the mean/std over its seeds, the best rate, the best single run."""
    grid, params = [], next((r["params"] for r in records if r.get("params")), None)
    for lr in dict.fromkeys(r["lr"] for r in records):
        runs = [r for r in records if r["lr"] == lr]
        per_metric = {k: [r["metrics"][k] for r in runs] for k in runs[0]["metrics"]}
        scores = [r["score"] for r in runs]
        grid.append({
            "lr": lr, "seeds": [r["seed"] for r in runs],
            "mean": {k: statistics.fmean(v) for k, v in per_metric.items()},
            "std": {k: _std(v) for k, v in per_metric.items()},
            "score_mean": statistics.fmean(scores), "score_std": _std(scores),
        })
    best = max(grid, key=lambda g: g["score_mean"])
    return {**header, "report_metrics": report_metrics, "settings": settings, "params": params, "grid": grid,
            "best": best, "best_run": {k: str(v) if isinstance(v, Path) else v for k, v in best_run.items()}}


def run_sweep(spec: SweepSpec, run_one: Callable[[float, int], RunResult], log: Callable[[str], None] = print) -> dict:
    """Run every (lr, seed), write the JSON files, return the summary."""
    spec.out.mkdir(parents=True, exist_ok=True)
    header = {k: getattr(spec, k) for k in ("kind", "task", "model", "model_name", "mode")}
    weights_name = "adapters" if spec.mode.startswith("adapters") else "model"
    records, best_run = [], None
    for lr in spec.lrs:
        for seed in spec.seeds:
            run_dir = spec.out / f"lr{lr:g}-seed{seed}"
            result = run_one(lr, seed)
            record = {**header, "lr": lr, "seed": seed, "settings": spec.settings, **result.info,
                      "metrics": result.metrics, "score": result.score, "weights": None}
            improves = best_run is None or result.score > best_run["score"]
            if spec.save == "all" or (spec.save == "best" and improves):
                record["weights"] = str(result.save(run_dir / weights_name))
            write_json(run_dir / "result.json", record)
            if improves:
                if spec.save == "best" and best_run is not None:
                    # Only now that the new best is on disk does the old one go.
                    shutil.rmtree(best_run["weights"], ignore_errors=True)
                    old = json.loads((best_run["dir"] / "result.json").read_text())
                    write_json(best_run["dir"] / "result.json", {**old, "weights": None})
                best_run = {"dir": run_dir, "score": result.score, "weights": record["weights"], "lr": lr, "seed": seed}
            records.append(record)
            shown = ", ".join(f"{k} {result.metrics[k]:.4f}" for k in spec.report_metrics)
            log(f"{spec.task} | {spec.model_name} | {spec.mode} | lr {lr:g} seed {seed}: {shown}")
    summary = summarise(header, spec.report_metrics, spec.settings, records, best_run)
    write_json(spec.out / "summary.json", summary)
    best = summary["best"]
    shown = ", ".join(f"{k} {best['mean'][k]:.4f} ± {best['std'][k]:.4f}" for k in spec.report_metrics)
    log(f"{spec.task} | {spec.model_name} | {spec.mode} | best lr {best['lr']:g} over {len(spec.seeds)} seed(s): {shown}")
    log(f"wrote {spec.out / 'summary.json'}")
    return summary


def merge_sweeps(sources: list[str], out: str) -> dict:
    """One ``summary.json`` in ``out`` over the runs of several sweeps of the same model, mode and task (seeds or
    rates run as separate jobs); each run stays where it is. Refuses sweeps of different rows or a run twice."""
    header_keys = ("kind", "task", "model", "model_name", "mode")
    records, header, first = [], None, None
    for source in sources:
        path = Path(source) / "summary.json"
        if not path.is_file():
            raise InputError(f"{source}: no summary.json (expected a finished finetune --out folder)")
        summary = json.loads(path.read_text())
        this = {k: summary.get(k) for k in header_keys}
        if header is None:
            header, first = this, summary
        elif this != header:
            diff = [k for k in header_keys if this[k] != header[k]]
            raise InputError(f"{source}: another sweep ({', '.join(f'{k} {this[k]!r}' for k in diff)}) than "
                             f"{sources[0]} ({', '.join(f'{k} {header[k]!r}' for k in diff)})")
        for result in sorted(Path(source).glob("lr*-seed*/result.json")):
            record = {**json.loads(result.read_text()), "dir": str(result.parent)}
            twin = next((r for r in records if (r["lr"], r["seed"]) == (record["lr"], record["seed"])), None)
            if twin:
                raise InputError(f"{result}: lr {record['lr']:g} seed {record['seed']} also in {twin['dir']}")
            records.append(record)
    records.sort(key=lambda r: (r["lr"], r["seed"]))
    best = max(records, key=lambda r: r["score"])
    best_run = {"dir": best["dir"], "score": best["score"], "weights": best["weights"], "lr": best["lr"],
                "seed": best["seed"]}
    summary = summarise(header, first["report_metrics"], {**first["settings"], "merged_from": sources}, records,
                        best_run)
    write_json(Path(out) / "summary.json", summary)
    return summary


# ----- from command-line arguments to a sweep -------------------------------------------------------------------
# Adapters (116K parameters on a frozen body) want a far larger rate: on the cpu.yaml student, NCBI-disease test F1
# 0.438 at 5e-4 and 0.635 at 2e-3 (full tuning 0.611 at 5e-5); docs/results.md, issue 33.
DEFAULT_LR = {"full": [5e-5], "adapters": [2e-3]}


def make_spec(args, kind: str, task: str, report_metrics: list[str]) -> SweepSpec:
    """The sweep the shared flags describe (see ``__main__.add_training_flags``)."""
    if not (Path(args.model) / "config.json").is_file():
        raise InputError(f"{args.model}: not a model folder (expected config.json and weights from save_pretrained)")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--max-length", args.max_length)):
        if value < 1:
            raise InputError(f"{flag} {value}: expected a positive integer")
    if args.lr and min(args.lr) <= 0:
        raise InputError(f"--lr {' '.join(map(str, args.lr))}: learning rates must be positive")
    mode = "adapters" if args.adapters_only else "full"
    name = args.name or Path(args.model).resolve().name
    lrs = list(dict.fromkeys(args.lr or DEFAULT_LR[mode]))  # a repeated value would overwrite its own run
    if args.distill_from:  # "full + distil, aug 4": a report row of its own
        mode += " + distil" + (f", aug {args.augment}" if args.augment else "")
    slug = mode.replace(" + ", "-").replace(", aug ", "-aug")
    out = Path(args.out) if args.out else Path("runs/finetune") / f"{kind}-{task}-{name}-{slug}"
    settings = {"epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
                "weight_decay": args.weight_decay, "warmup_ratio": args.warmup_ratio}
    return SweepSpec(kind=kind, task=task, model=str(args.model), model_name=name, mode=mode, lrs=lrs,
                     seeds=list(dict.fromkeys(args.seeds)), out=out, save=args.save, report_metrics=report_metrics, settings=settings)


def make_runner(args, spec: SweepSpec, head: str, id2label: dict[int, str], regression: bool, tokenizer,
                train_features: dict[str, list], evaluate: Callable,
                similarity_scale: float = 1.0, loss_fn: Callable | None = None) -> Callable[[float, int], RunResult]:
    """``run_one(lr, seed)``: fresh head from the model folder, train, ``evaluate(model, device, dtype)``.

    ``evaluate`` returns ``(metrics, score)``; ``loss_fn(model, batch)`` replaces the model's loss.
    """
    import torch
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    from .training import TrainConfig, build_model, pick_autocast, pick_device, save_weights, train

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    dtype = pick_autocast(args.precision, device)
    spec.settings.update(device=str(device), precision="bf16" if dtype is not None else "fp32",
                         train_examples=len(train_features["input_ids"]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logged = []

    def run_one(lr: float, seed: int) -> RunResult:
        set_seed(seed)  # the fresh head's initialisation depends on the seed too
        verbosity = hf_logging.get_verbosity()
        if logged:  # the load report (fresh head, unused MLM head) is worth reading once, not once per run
            hf_logging.set_verbosity_error()
        try:
            model, counts = build_model(args.model, head, id2label, regression, args.adapters_only, similarity_scale)
        finally:
            hf_logging.set_verbosity(verbosity)
        if not logged:
            logged.append(True)
            share = counts["trainable"] / (counts["trainable"] + counts["frozen"])
            print(f"{spec.model_name} ({spec.mode}): {counts['trainable']:,} trainable parameters ({share:.2%}), "
                  f"{counts['frozen']:,} frozen; {device}, {spec.settings['precision']}")
        cfg = TrainConfig(lr=lr, epochs=args.epochs, batch_size=args.batch_size, seed=seed, device=device,
                          autocast_dtype=dtype, weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                          progress=not args.no_progress, desc=f"{spec.task} lr={lr:g} seed={seed}")
        stats = train(model, train_features, cfg, pad_id, loss_fn)
        metrics, score = evaluate(model, device, dtype, pad_id)
        return RunResult(metrics=metrics, score=score, info={"params": counts, **stats},
                         save=lambda d: save_weights(model, tokenizer, d, args.adapters_only))

    return run_one
