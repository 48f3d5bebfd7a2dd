"""``--distill-from DIR``: the fine-tuned teacher of task distillation — found, checked, and its predictions.

DIR is the ``--out`` folder of the teacher's own ``finetune`` run on the same task (its ``summary.json`` names the
best run, whose saved model is used; the run must have been full tuning with ``--save best|all``), or a folder
holding a saved task model directly. Refused in one line: no saved model; a teacher fine-tuned on another task
or label set (both named); a tokenizer whose words cannot be aligned (NER needs a fast tokenizer's word ids).

The teacher reads the training inputs (original and augmented) with its own tokenizer, once: its outputs are
cached in ``DIR/distill-cache/`` keyed by a hash of its weights and the inputs, so a sweep (rates, seeds, full
and adapters-only) computes them once. What the student learns from (``distill_loss``):
- classification: the teacher's logits per example, in the student's label order;
- STS-B: the teacher's score (its regression output, or 5 x cosine for a bi-encoder teacher);
- NER: the teacher's logits per *word* (each word read at its first word piece, from the window where it has
  most context), placed on the student's first piece of the same word: the two tokenizers may cut words
  differently, the words are the same.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.files import atomic_write, sha256_file

from . import InputError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class TaskTeacher:
    model_dir: Path
    base_model: str | None  # the general model it was fine-tuned from (the run's --model), when known
    pair_encoding: str  # "cross" or "siamese" (a bi-encoder teacher of a similarity task)
    cache_dir: Path

    @property
    def name(self) -> str:
        return str(self.model_dir)


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in WEIGHT_FILES)


def find_teacher(directory: str, kind: str, task: str) -> TaskTeacher:
    """The saved model behind ``--distill-from``; refuses a folder without one or one from another task."""
    folder = Path(directory)
    flag = f"--distill-from {directory}"
    if not folder.is_dir():
        raise InputError(f"{flag}: no such folder")
    summary_path = folder / "summary.json"
    if _has_weights(folder):
        summary = None
        model_dir = folder
    elif summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        if (summary.get("kind"), summary.get("task")) != (kind, task):
            raise InputError(f"{flag}: the teacher was fine-tuned on {summary.get('kind')} {summary.get('task')}; "
                             f"this run is {kind} {task}")
        if summary.get("mode") != "full":
            raise InputError(f"{flag}: its runs tuned {summary.get('mode')} only; distil from a fully fine-tuned "
                             "teacher")
        weights = (summary.get("best_run") or {}).get("weights")
        if not weights or not _has_weights(Path(weights)):
            raise InputError(f"{flag}: no saved model (its best run kept no weights: rerun the teacher's finetune "
                             "with --save best)")
        model_dir = Path(weights)
    else:
        raise InputError(f"{flag}: no saved model (expected a finetune --out folder with summary.json, or a model "
                         "folder with config.json and weights)")
    config = json.loads((model_dir / "config.json").read_text())
    if summary is not None:
        pair = (summary.get("settings") or {}).get("pair_encoding", "cross")
        base = summary.get("model")
    else:
        heads = ("ForSequenceClassification", "ForTokenClassification")
        pair = "cross" if any(a.endswith(heads) for a in config.get("architectures") or []) else "siamese"
        base = None
    cache = folder / "distill-cache"
    return TaskTeacher(model_dir=model_dir, base_model=base, pair_encoding=pair, cache_dir=cache)


def check_labels(teacher: TaskTeacher, labels: list[str], regression: bool, siamese_ok: bool) -> list[int] | None:
    """The teacher's output index of each of the student's labels (None for a score); refuses another label set."""
    config = json.loads((teacher.model_dir / "config.json").read_text())
    flag = f"--distill-from {teacher.name}"
    if regression:
        if teacher.pair_encoding == "siamese":
            if not siamese_ok:
                raise InputError(f"{flag}: a bi-encoder teacher scores sentence pairs; this task is not a similarity task")
            return None
        if config.get("num_labels", len(config.get("id2label") or {})) != 1:
            raise InputError(f"{flag}: the teacher's labels are {sorted((config.get('id2label') or {}).values())}; "
                             "this task is a regression (one score)")
        return None
    theirs = [config.get("id2label", {}).get(str(i)) for i in range(len(config.get("id2label") or {}))]
    if teacher.pair_encoding == "siamese" or sorted(map(str, theirs)) != sorted(labels):
        shown = "a similarity score" if teacher.pair_encoding == "siamese" else theirs
        raise InputError(f"{flag}: the teacher's labels are {shown}; this task's are {labels}")
    return [theirs.index(lab) for lab in labels]


def load_teacher_tokenizer(teacher: TaskTeacher, word_aligned: bool):
    """The teacher's own tokenizer (saved beside its weights); a fast one where words must be aligned."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(teacher.model_dir))
    except (OSError, ValueError) as e:
        raise InputError(f"--distill-from {teacher.name}: no loadable tokenizer ({str(e).splitlines()[0]})") from None
    if word_aligned and not tokenizer.is_fast:
        raise InputError(f"--distill-from {teacher.name}: its tokenizer ({type(tokenizer).__name__}) gives no word ids; "
                         "the student's words cannot be aligned with the teacher's pieces (a fast tokenizer is needed)")
    return tokenizer


def cached_outputs(teacher: TaskTeacher, what: dict, compute) -> list[np.ndarray]:
    """``compute()`` (a list of 2-D float32 arrays) stored in the teacher's cache, keyed by its weights and
    ``what``; a reader never sees half a file."""
    weights = "".join(sha256_file(teacher.model_dir / f) for f in WEIGHT_FILES if (teacher.model_dir / f).is_file())
    key = hashlib.sha256((weights + json.dumps(what, sort_keys=True)).encode())
    path = teacher.cache_dir / f"outputs-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return np.split(z["flat"], z["ends"][:-1])
    outputs = [np.asarray(o, dtype=np.float32) for o in compute()]
    teacher.cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, flat=np.concatenate(outputs), ends=np.cumsum([len(o) for o in outputs]))
    return outputs


def _load(teacher: TaskTeacher, head: str, scale: float):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from .training import HEADS

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if head == "similarity":
            from .similarity import PairSimilarity, pooling_of

            encoder = AutoModel.from_pretrained(str(teacher.model_dir))
            pooled_like = teacher.base_model if teacher.base_model and Path(teacher.base_model).is_dir() else teacher.model_dir
            return PairSimilarity(encoder, pooling_of(pooled_like, encoder.config), scale)
        return HEADS[head].from_pretrained(str(teacher.model_dir))
    finally:
        hf_logging.set_verbosity(verbosity)


def teacher_outputs(teacher: TaskTeacher, head: str, features: dict[str, list], batch_size: int, device, dtype,
                    pad_id: int, scale: float = 1.0) -> tuple[list[np.ndarray], float]:
    """The teacher's logits on ``features`` (encoded with its tokenizer): (1, C) per example for ``head``
    "sequence" / "similarity", (L_i, C) for "token"; cached. Returns them and the seconds spent (0 if cached)."""
    import time

    from .training import predict

    started = time.perf_counter()
    spent = []

    def compute():
        model = _load(teacher, head, scale)
        out = [np.atleast_2d(x) for x in predict(model, features, batch_size, device, dtype, pad_id)]
        spent.append(time.perf_counter() - started)
        return out

    inputs = hashlib.sha256(json.dumps({k: v for k, v in features.items() if k != "labels"}).encode()).hexdigest()
    what = {"head": head, "scale": scale, "inputs": inputs, "precision": str(dtype)}
    outputs = cached_outputs(teacher, what, compute)
    return outputs, round(spent[0], 2) if spent else 0.0


@dataclass
class DistillPlan:
    """What ``--distill-from`` / ``--augment`` ask for, checked: the teacher, the loss settings, the augmenter."""

    teacher: TaskTeacher
    settings: object  # distill_loss.DistillSettings
    augment: int
    augment_seed: int
    augmenter: object | None  # augment.Augmenter, when augment > 0
    device: object
    dtype: object
    teacher_seconds: float = 0.0  # its predictions on the training set (0: read from the cache)
    augment_seconds: float = 0.0  # drawing the copies (about 0: read from the cache)

    def describe(self) -> dict:
        """For every run's JSON (``settings``)."""
        return {"distill_from": self.teacher.name, "distill_weight": self.settings.weight,
                "distill_temperature": self.settings.temperature, "distill_hidden": self.settings.hidden,
                "augment": self.augment,
                "augment_seed": self.augment_seed,
                "augment_source": self.augmenter.source if self.augmenter else None,
                "teacher_seconds": self.teacher_seconds, "augment_seconds": self.augment_seconds}


def teacher_alongside(plan: DistillPlan, head: str, student_dir: str, student_tokenizer, teacher_tokenizer):
    """The fine-tuned teacher on the run's device, for ``--distill-hidden``: refused where the shapes do not allow
    the term (another width, another tokenizer: the term compares the same tokens' states)."""
    flag = f"--distill-hidden {plan.settings.hidden}"
    if head == "similarity":
        raise InputError(f"{flag}: a bi-encoder (siamese) run has no token states in its loss; use it with "
                         "--pair-encoding cross or leave it 0")
    student = json.loads((Path(student_dir) / "config.json").read_text())
    teacher = json.loads((plan.teacher.model_dir / "config.json").read_text())
    if student.get("hidden_size") != teacher.get("hidden_size"):
        raise InputError(f"{flag}: the student's hidden size {student.get('hidden_size')} is not the teacher's "
                         f"{teacher.get('hidden_size')}")
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise InputError(f"{flag}: the student's tokenizer is not the teacher's (the term compares the states of "
                         "the same tokens)")
    return _load(plan.teacher, head, 1.0).to(plan.device).eval()


def loss_function(plan: DistillPlan, head: str, student_dir: str, student_tokenizer, regression: bool):
    """``loss_fn(model, batch)`` for ``training.train``: ``distill_loss.distillation_loss`` with the teacher
    alongside where ``--distill-hidden`` asks for it."""
    import functools

    from .distill_loss import distillation_loss

    alongside = None
    if plan.settings.hidden:
        alongside = teacher_alongside(plan, head, student_dir, student_tokenizer,
                                      load_teacher_tokenizer(plan.teacher, word_aligned=False))
    return functools.partial(distillation_loss, settings=plan.settings, regression=regression,
                             teacher_model=alongside)


def plan_distillation(args, kind: str, task: str) -> DistillPlan | None:
    """None without ``--distill-from``; refuses flags that make no sense (``--augment`` without a teacher)."""
    from .augment import make_augmenter
    from .distill_loss import DistillSettings
    from .training import pick_autocast, pick_device

    if not args.distill_from:
        if args.augment:
            raise InputError(f"--augment {args.augment}: needs --distill-from (only the fine-tuned teacher labels "
                             "the new copies)")
        return None
    if not 0 <= args.distill_weight <= 1:
        raise InputError(f"--distill-weight {args.distill_weight}: expected a share between 0 and 1")
    if args.distill_hidden < 0:
        raise InputError(f"--distill-hidden {args.distill_hidden}: expected a weight of 0 or more")
    if args.distill_temperature <= 0:
        raise InputError(f"--distill-temperature {args.distill_temperature}: expected a positive number")
    if args.augment < 0:
        raise InputError(f"--augment {args.augment}: expected 0 or more copies")
    teacher = find_teacher(args.distill_from, kind, task)
    augmenter = make_augmenter(args.augment_source, args.wordnet, teacher.base_model) if args.augment else None
    device = pick_device(args.device)
    return DistillPlan(teacher=teacher, settings=DistillSettings(args.distill_weight, args.distill_temperature,
                                                                      args.distill_hidden),
                       augment=args.augment, augment_seed=args.augment_seed, augmenter=augmenter,
                       device=device, dtype=pick_autocast(args.precision, device))
