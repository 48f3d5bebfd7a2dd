"""The Markdown results table across fine-tuning sweeps: one row per (model, mode), one column per task.

Used by ``python -m minialbert.finetune report`` and by the export's model card (``minialbert.export``), so it sits
below both.

A cell shows the task's metrics at the best learning rate, x100, as ``mean±std`` over seeds (``/`` between
metrics: MRPC F1/Acc, STS-B Pearson/Spearman, MNLI m/mm, NER test P/R/F1). When several sweeps give the same
cell, the one with the best selection score is shown. "Avg" is the mean of the per-task scores (the mean
of each task's metrics, the NER F1 for NER), given only for rows with every column.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path


class SummaryError(ValueError):
    """A path holds no fine-tuning summary, or a file that is not one; the message names it."""


GLUE_ORDER = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
METRIC_LABELS = {"accuracy": "Acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman",
                 "accuracy_matched": "m", "accuracy_mismatched": "mm",
                 "test_precision": "P", "test_recall": "R", "test_f1": "F1"}


def collect(paths: list[str]) -> list[dict]:
    """Every ``summary.json`` named or found (recursively) under the given folders."""
    files = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob("summary.json")))
        else:
            raise SummaryError(f"{p}: no such file or folder")
    summaries = []
    for f in files:
        try:
            s = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise SummaryError(f"{f}: not JSON ({e.msg} at line {e.lineno})") from None
        missing = [k for k in ("kind", "task", "model_name", "mode", "report_metrics", "best") if k not in s]
        if missing:
            raise SummaryError(f"{f}: not a fine-tuning summary (no {missing})")
        summaries.append(s)
    if not summaries:
        raise SummaryError(f"no summary.json under {' '.join(paths)}")
    return summaries


def _cell(summary: dict) -> str:
    best, several = summary["best"], len(summary["best"]["seeds"]) > 1
    parts = []
    for k in summary["report_metrics"]:
        mean = 100 * best["mean"][k]
        parts.append(f"{mean:.1f}±{100 * best['std'][k]:.1f}" if several else f"{mean:.1f}")
    return " / ".join(parts)


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _headline(summary: dict) -> float:
    """One number per task for the average: the task's metrics' mean (NER: test F1)."""
    keys = ["test_f1"] if summary["kind"] == "ner" else summary["report_metrics"]
    return statistics.fmean(summary["best"]["mean"][k] for k in keys)


def render(summaries: list[dict]) -> str:
    cells: dict[tuple[str, str], dict[str, dict]] = {}
    columns: dict[str, list[str]] = {}
    for s in summaries:
        row = cells.setdefault((s["model_name"], s["mode"]), {})
        if s["task"] not in row or s["best"]["score_mean"] > row[s["task"]]["best"]["score_mean"]:
            row[s["task"]] = s
        columns[s["task"]] = s["report_metrics"]
    order = [t for t in GLUE_ORDER if t in columns] + sorted(t for t in columns if t not in GLUE_ORDER)
    header = ["Model", "Tuning", "Params (trainable, %)"]
    header += [f"{t.upper() if t in GLUE_ORDER else t} ({'/'.join(METRIC_LABELS.get(k, k) for k in columns[t])})"
               for t in order]
    header.append("Avg")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, mode), row in sorted(cells.items()):
        params = next((s["params"] for s in row.values() if s.get("params")), None)
        total = None if params is None else params["trainable"] + params["frozen"]
        shown = ("–" if params is None else
                 f"{_count(total)} ({_count(params['trainable'])}, {100 * params['trainable'] / total:.3g}%)")
        avg = f"{100 * statistics.fmean(_headline(row[t]) for t in order):.1f}" if set(order) <= set(row) else "–"
        values = [_cell(row[t]) if t in row else "–" for t in order]
        lines.append("| " + " | ".join([name, mode, shown, *values, avg]) + " |")
    seeds = sorted({len(s["best"]["seeds"]) for s in summaries})
    note = (f"\nValues x100 at each sweep's best learning rate; mean±std over {'/'.join(map(str, seeds))} seed(s); "
            "GLUE on validation, NER on test (rate chosen on devel).\n")
    return "\n".join(lines) + "\n" + note
