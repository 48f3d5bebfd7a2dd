"""GLUE: task definitions, data loading (hub, saved dataset folder, or csv/tsv/jsonl files), encoding, metrics.

    python -m minialbert.finetune glue --task rte --model DIR                      # datasets hub (online)
    python -m minialbert.finetune glue --task rte --model DIR --data glue/rte      # local folder
    python -m minialbert.finetune glue --task mnli --model DIR --data train.tsv dev_matched.tsv dev_mismatched.tsv

A local folder is either a ``DatasetDict.save_to_disk`` folder or holds one file per split named
``{train,validation,validation_matched,validation_mismatched}.{tsv,csv,jsonl,json}`` (``dev*`` and the STS
Benchmark's ``sts-{train,dev}`` also accepted); a folder that contains a sub-folder named after the task is
entered. Files carry the Hugging Face GLUE column names (e.g. ``sentence1 sentence2 label``; GLUE's STS-B files
name the label ``score``); labels are integers or the GLUE label names (``not_entailment``). STS-B also reads
the STS Benchmark's own files (no header: genre, file, year, id, score, sentence1, sentence2, then optional
licence notes), and CoLA GLUE's own files (no header: source, label, original label, sentence); a file's
layout is told by its first line. Tab-separated files are read without quoting: their
text holds bare quotes. Results are reported on the validation split(s), as in the paper.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import InputError
from . import metrics as M

HUB_NAME = "nyu-mll/glue"
METRIC_FNS = {"accuracy": M.accuracy, "f1": M.binary_f1, "mcc": M.matthews_corrcoef,
              "pearson": M.pearson, "spearman": M.spearman}
FILE_EXTS = (".tsv", ".csv", ".jsonl", ".json")
SPLIT_ALIASES = {"dev": "validation", "valid": "validation", "dev_matched": "validation_matched",
                 "dev_mismatched": "validation_mismatched", "sts-train": "train", "sts-dev": "validation",
                 "sts-test": "test"}


@dataclass(frozen=True)
class GlueTask:
    name: str
    text_columns: tuple[str, ...]  # one sentence or a pair
    label_names: tuple[str, ...]  # () for STS-B, a regression
    metrics: tuple[str, ...]  # keys of METRIC_FNS, in the order GLUE reports them
    eval_splits: tuple[str, ...] = ("validation",)

    @property
    def regression(self) -> bool:
        return not self.label_names

    @property
    def metric_keys(self) -> list[str]:
        """``accuracy``; for MNLI ``accuracy_matched`` and ``accuracy_mismatched``."""
        if len(self.eval_splits) == 1:
            return list(self.metrics)
        return [f"{m}_{s.removeprefix('validation_')}" for s in self.eval_splits for m in self.metrics]


@dataclass(frozen=True)
class HeaderlessLayout:
    """A task's own file layout without a header line: the fields in order, ``label`` being the label's field."""

    name: str
    fields: tuple[str, ...]
    trailing: bool = False  # more fields may follow the last one; they are ignored

    def takes(self, n_fields: int) -> bool:
        return n_fields == len(self.fields) or (n_fields > len(self.fields) and self.trailing)

    def fits(self, task: GlueTask, fields: list[str]) -> bool:
        """Whether a line reads as a row of this layout (a header line does not: its label field is a name)."""
        if not self.takes(len(fields)):
            return False
        try:
            _label(task, fields[self.fields.index("label")], "")
        except InputError:
            return False
        return True


HEADERLESS = {
    # sts-{train,dev,test}.{tsv,csv} of the STS Benchmark (ixa2.si.ehu.eus/stswiki), tab-separated whatever the
    # suffix; some lines carry licence notes after sentence2 (Europe Media Monitor, StackExchange authors).
    "stsb": HeaderlessLayout("the STS Benchmark's layout",
                             ("genre", "file", "year", "id", "label", "sentence1", "sentence2"), trailing=True),
    # GLUE's CoLA/{train,dev}.tsv: source code, label 0/1, the author's mark ("*", "?", or empty), sentence.
    "cola": HeaderlessLayout("GLUE's CoLA layout", ("source", "label", "original_label", "sentence")),
}
LABEL_HEADERS = {"stsb": "score"}  # GLUE's own STS-B files name the label column "score"

TASKS = {t.name: t for t in (
    GlueTask("cola", ("sentence",), ("unacceptable", "acceptable"), ("mcc",)),
    GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    GlueTask("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    GlueTask("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearman")),
    GlueTask("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    GlueTask("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
             ("validation_matched", "validation_mismatched")),
    GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
    GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
)}


# ----- loading ------------------------------------------------------------------------------------------------
def _label(task: GlueTask, value, where: str) -> int | float:
    """An int class id (or a float score for STS-B) from an int, a numeric string or a GLUE label name."""
    try:
        if task.regression:
            return float(value)
        if isinstance(value, str) and value.strip() in task.label_names:
            return task.label_names.index(value.strip())
        number = float(value)
        if number.is_integer() and 0 <= number < len(task.label_names):
            return int(number)
    except (TypeError, ValueError):
        pass
    expected = "a number" if task.regression else f"0..{len(task.label_names) - 1} or one of {list(task.label_names)}"
    raise InputError(f"{where}: label {value!r} is not valid for {task.name} (expected {expected})")


def _read_file(task: GlueTask, path: Path) -> tuple[list[dict], list[int]]:
    """Rows as dicts and the line number of each; tsv without quoting (GLUE text holds bare quotes)."""
    rows, lines = [], []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            if path.suffix in (".jsonl", ".json"):
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as e:
                            raise InputError(f"{path}:{lineno}: not a JSON object per line ({e.msg})") from None
                        if not isinstance(row, dict):
                            raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
                        rows.append(row)
                        lines.append(lineno)
                return rows, lines
            first = f.readline().rstrip("\r\n")
            f.seek(0)
            layout = HEADERLESS.get(task.name)
            if layout is not None and layout.fits(task, first.split("\t")):
                return _read_headerless(layout, path, f)
            tsv = path.suffix == ".tsv"
            reader = csv.reader(f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file (expected a header line with the GLUE column names)")
            alias = LABEL_HEADERS.get(task.name)
            if alias and "label" not in header:
                header = ["label" if h == alias else h for h in header]
            if layout is not None and not {*task.text_columns, "label"} <= set(header):
                label = f"label or {alias}" if alias else "label"
                raise InputError(f"{path}: neither {layout.name} ({', '.join(layout.fields)}; no header) nor a header "
                                 f"naming {', '.join(task.text_columns)} and {label}; line 1 is {first[:80]!r}")
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise InputError(f"{path}:{reader.line_num}: expected {len(header)} fields like the header "
                                     f"{header}, got {len(fields)}")
                rows.append(dict(zip(header, fields)))
                lines.append(reader.line_num)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return rows, lines


def _read_headerless(layout: HeaderlessLayout, path: Path, f) -> tuple[list[dict], list[int]]:
    """Every "\\n"-separated line is a row (a last line without "\\n" too): tab-separated, quotes are text."""
    rows, lines = [], []
    for lineno, line in enumerate(f.read().split("\n"), 1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        if not layout.takes(len(fields)):
            raise InputError(f"{path}:{lineno}: expected {len(layout.fields)} tab-separated fields "
                             f"({', '.join(layout.fields)}; {layout.name}), got {len(fields)}")
        rows.append(dict(zip(layout.fields, fields)))
        lines.append(lineno)
    return rows, lines


def _columns_from_rows(task: GlueTask, rows: list[dict], where: list[str], source: str) -> dict[str, list]:
    wanted = [*task.text_columns, "label"]
    for col in wanted:
        if rows and col not in rows[0]:
            raise InputError(f"{source}: no column '{col}' (found {sorted(rows[0])}); "
                             f"GLUE {task.name} needs columns {wanted}")
    columns = {c: [] for c in wanted}
    for row, loc in zip(rows, where):
        for c in task.text_columns:
            text = row.get(c)
            if not isinstance(text, str):
                raise InputError(f"{loc}: column '{c}' is {text!r}, expected text")
            columns[c].append(text)
        columns["label"].append(_label(task, row.get("label"), loc))
    if not rows:
        raise InputError(f"{source}: no examples")
    return columns


def _from_files(task: GlueTask, files: list[str]) -> dict[str, dict[str, list]]:
    """``split=path`` or a path whose stem names the split (``dev.tsv`` is the validation split)."""
    splits = {}
    for item in files:
        split, _, name = item.rpartition("=") if "=" in item else ("", "", item)
        path = Path(name)
        if not path.is_file():
            raise InputError(f"{path}: no such file (--data takes a folder or files named after their split)")
        splits[split or SPLIT_ALIASES.get(path.stem, path.stem)] = read_split(task, path)
    return splits


def read_split(task: GlueTask, path: Path) -> dict[str, list]:
    """One split's file (any layout above) as ``{column: values}``, labels already ids/floats."""
    rows, lines = _read_file(task, path)
    return _columns_from_rows(task, rows, [f"{path}:{n}" for n in lines], str(path))


def _from_dataset_dict(task: GlueTask, dsd, source: str, needed: tuple[str, ...]) -> dict[str, dict[str, list]]:
    splits = {}
    for split in needed:
        if split not in dsd:
            continue
        ds = dsd[split]
        missing = [c for c in (*task.text_columns, "label") if c not in ds.column_names]
        if missing:
            raise InputError(f"{source}: split '{split}' has no column(s) {missing} (found {ds.column_names})")
        cols = {c: list(ds[c]) for c in task.text_columns}  # datasets 5 returns lazy Column objects
        cols["label"] = [_label(task, v, f"{source} split '{split}' row {i}") for i, v in enumerate(ds["label"])]
        splits[split] = cols
    return splits


def load_glue(task: GlueTask, data: list[str] | None) -> dict[str, dict[str, list]]:
    """``{split: {column: values}}`` for train and the task's validation split(s); labels already ids/floats."""
    import datasets

    needed = ("train", *task.eval_splits)
    if not data:
        source = f"hub dataset {HUB_NAME}/{task.name}"
        # Offline, the retries' warnings would bury the one-line error.
        loggers = [logging.getLogger(n) for n in ("datasets", "huggingface_hub")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            splits = _from_dataset_dict(task, datasets.load_dataset(HUB_NAME, task.name), source, needed)
        except InputError:
            raise
        except Exception as e:  # offline, no such config, ...: one line, and how to work offline
            raise InputError(f"{source}: could not load ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                             "pass --data with a local folder or files") from None
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
    elif len(data) == 1 and Path(data[0]).is_dir():
        folder = Path(data[0])
        if not (folder / "dataset_dict.json").is_file() and (folder / task.name).is_dir():
            folder = folder / task.name
        source = str(folder)
        if (folder / "dataset_dict.json").is_file():
            splits = _from_dataset_dict(task, datasets.load_from_disk(str(folder)), source, needed)
        else:
            files = [str(p) for p in sorted(folder.iterdir())
                     if p.suffix in FILE_EXTS and SPLIT_ALIASES.get(p.stem, p.stem) in needed]
            if not files:
                raise InputError(f"{folder}: neither a saved dataset (dataset_dict.json) nor split files "
                                 f"({', '.join(s + '.tsv' for s in needed)}; .csv/.jsonl also read)")
            splits = _from_files(task, files)
    else:
        source = " ".join(data)
        splits = _from_files(task, data)
    for split in needed:
        if split not in splits:
            raise InputError(f"{source}: no '{split}' split (found {sorted(splits) or 'none'}); "
                             f"GLUE {task.name} needs {list(needed)}")
    return {s: splits[s] for s in needed}


# ----- encoding and metrics -----------------------------------------------------------------------------------
SIMILARITY_SCALE = {"stsb": 5.0}
"""The similarity tasks (a bi-encoder can score their pairs by cosine) and their top score."""


def pair_encoding(task: GlueTask, model_dir: str, requested: str) -> str:
    """'cross' ([CLS] a [SEP] b [SEP] into one head) or 'siamese' (``similarity.PairSimilarity``): ``auto`` is
    siamese for a similarity task on a sentence-transformers folder (the model was built to be used so), else
    cross."""
    if requested == "siamese" and task.name not in SIMILARITY_SCALE:
        raise InputError(f"--pair-encoding siamese: {task.name} is not a similarity task "
                         f"(expected one of {', '.join(SIMILARITY_SCALE)})")
    if requested == "auto":
        from .similarity import is_sentence_transformers_folder

        return "siamese" if task.name in SIMILARITY_SCALE and is_sentence_transformers_folder(model_dir) else "cross"
    return requested


def encode(task: GlueTask, columns: dict[str, list], tokenizer, max_length: int) -> dict[str, list]:
    """Token ids (+ token types) per example, truncated to ``max_length`` (longest sentence first), and labels."""
    enc = tokenizer(*(columns[c] for c in task.text_columns), truncation=True, max_length=max_length)
    feats = {k: enc[k] for k in ("input_ids", "token_type_ids") if k in enc}
    feats["labels"] = list(columns["label"])
    return feats


def compute_metrics(task: GlueTask, logits: dict[str, list[np.ndarray]], labels: dict[str, list]) -> dict[str, float]:
    """GLUE metrics per validation split: argmax of the logits (or the single regression output)."""
    out = {}
    for split in task.eval_splits:
        scores = np.stack(logits[split])  # (N, num_labels)
        preds = scores[:, 0] if task.regression else scores.argmax(axis=1)
        refs = np.asarray(labels[split])
        for m in task.metrics:
            key = m if len(task.eval_splits) == 1 else f"{m}_{split.removeprefix('validation_')}"
            out[key] = METRIC_FNS[m](preds, refs)
    return out


def with_augmented_copies(task: GlueTask, columns: dict[str, list], plan) -> dict[str, list]:
    """The training columns followed by ``--augment`` copies (words split on spaces; no gold label)."""
    if not plan.augment:
        return columns
    from .augment import augment, cached

    rows = [[columns[c][i].split() for c in task.text_columns] for i in range(len(columns["label"]))]
    what = {"inputs": rows, "k": plan.augment, "seed": plan.augment_seed, "source": plan.augmenter.source,
            "mlm": plan.teacher.base_model if "mlm" in plan.augmenter.source else None}
    started = time.perf_counter()
    copies = cached(plan.teacher.cache_dir, what, lambda: augment(rows, None, plan.augment, plan.augment_seed,
                                                                  plan.augmenter))
    plan.augment_seconds = round(time.perf_counter() - started, 2)
    no_label = float("nan") if task.regression else -100
    out = {c: list(v) for c, v in columns.items()}
    for _row, segments in copies:
        for c, words in zip(task.text_columns, segments):
            out[c].append(" ".join(words))
        out["label"].append(no_label)
    return out


def glue_teacher_outputs(task: GlueTask, columns: dict[str, list], plan, args) -> list[np.ndarray]:
    """The fine-tuned teacher's logits (1, C) in this task's label order, or its score (1, 1), per example."""
    from .similarity import encode_pairs
    from .task_teacher import check_labels, load_teacher_tokenizer, teacher_outputs
    from .training import max_sequence_length

    order = check_labels(plan.teacher, list(task.label_names), task.regression, task.name in SIMILARITY_SCALE)
    tokenizer = load_teacher_tokenizer(plan.teacher, word_aligned=False)
    max_length = max_sequence_length(plan.teacher.model_dir, tokenizer, args.max_length)
    siamese = plan.teacher.pair_encoding == "siamese"
    if siamese:
        feats = encode_pairs(*(columns[c] for c in task.text_columns), columns["label"], tokenizer, max_length)
    else:
        feats = encode(task, columns, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    outputs, plan.teacher_seconds = teacher_outputs(
        plan.teacher, "similarity" if siamese else "sequence", feats, args.eval_batch_size, plan.device, plan.dtype,
        pad_id, SIMILARITY_SCALE.get(task.name, 1.0))
    return [o[:, order] if order else o for o in outputs]


def run_glue(args) -> dict:
    """Fine-tune ``args.model`` on one GLUE task over the lr x seed sweep; returns the summary."""
    from .similarity import encode_pairs
    from .sweep import make_runner, make_spec, run_sweep
    from .task_teacher import loss_function, plan_distillation
    from .training import load_tokenizer, max_sequence_length, predict

    task = TASKS[args.task]
    spec = make_spec(args, "glue", task.name, task.metric_keys)
    siamese = pair_encoding(task, args.model, args.pair_encoding) == "siamese"
    data = load_glue(task, args.data)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    max_length = max_sequence_length(args.model, tokenizer, args.max_length)

    def features(columns):
        if siamese:
            return encode_pairs(*(columns[c] for c in task.text_columns), columns["label"], tokenizer, max_length)
        return encode(task, columns, tokenizer, max_length)

    plan = plan_distillation(args, "glue", task.name)
    train_columns = data["train"]
    if plan:
        train_columns = with_augmented_copies(task, train_columns, plan)
    train_features = features(train_columns)
    eval_features = {s: features(data[s]) for s in task.eval_splits}
    loss_fn = None
    if plan:  # the loss first: what it refuses (--distill-hidden) costs no teacher pass
        loss_fn = loss_function(plan, "similarity" if siamese else "sequence", args.model, tokenizer, task.regression)
        train_features["teacher"] = glue_teacher_outputs(task, train_columns, plan, args)
        spec.settings.update(plan.describe(), augmented_examples=len(train_columns["label"]) - len(data["train"]["label"]))

    def evaluate(model, device, dtype, pad_id):
        logits = {s: predict(model, f, args.eval_batch_size, device, dtype, pad_id) for s, f in eval_features.items()}
        metrics = compute_metrics(task, logits, {s: f["labels"] for s, f in eval_features.items()})
        return metrics, float(np.mean(list(metrics.values())))

    id2label = dict(enumerate(task.label_names)) or {0: "score"}
    spec.settings.update(max_length=max_length, eval_examples={s: len(f["labels"]) for s, f in eval_features.items()},
                         pair_encoding="siamese" if siamese else "cross")
    run_one = make_runner(args, spec, "similarity" if siamese else "sequence", id2label, task.regression, tokenizer,
                          train_features, evaluate, similarity_scale=SIMILARITY_SCALE.get(task.name, 1.0),
                          loss_fn=loss_fn)
    return run_sweep(spec, run_one)
