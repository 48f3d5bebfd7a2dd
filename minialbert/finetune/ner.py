"""Named-entity recognition in the BioBERT layout, with entity-level precision/recall/F1 (seqeval).

    python -m minialbert.finetune ner --data biobert/NCBI-disease --model runs/student/export --epochs 5

``--data`` holds ``train.tsv``, ``devel.tsv`` (or ``dev.tsv``) and ``test.tsv``: one ``token<TAB>label`` per
line, a blank line between sentences (``-DOCSTART-`` lines also end a sentence). Labels are IOB tags, typed
(``B-Disease``) or bare (``B``, as BioBERT ships them). The label set is train's; a devel/test label that train
never shows is an error naming its file and line (the head could never predict it). A train file whose
labels are all ``O`` gets a warning (no entity tags: F1 can only be 0), an error with ``--strict``.

Each word is labelled on its first word piece (later pieces and special tokens get -100); a byte-level BPE
tokenizer (RoBERTa, ModernBERT) gets ``add_prefix_space`` so that each word is cut as after a space, as in
running text, and SentencePiece's ``▁`` pieces start words by themselves. A sentence longer
than the model's limit is cut at word boundaries into windows of at most ``max_length - 2`` pieces, each
sharing up to ``--window-overlap`` pieces of context with the next; every word is then predicted from the
window where it sits farthest from a cut. The learning rate is chosen on devel F1; test P/R/F1 are reported.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import InputError

SPLIT_FILES = {"train": ("train.tsv",), "devel": ("devel.tsv", "dev.tsv"), "test": ("test.tsv",)}


@dataclass
class Sentence:
    words: list[str]
    labels: list[str]
    lines: list[int]  # line number of each word in its file, for error messages
    gold: bool = True  # False: an --augment copy, labelled by the teacher only


@dataclass
class Window:
    """Words ``[start, end)`` of one sentence, encoded as one sequence."""

    sentence: int
    start: int
    end: int
    first_piece: list[int]  # (end - start,) position of each word's first piece in the window's input_ids


def read_tsv(path: Path) -> list[Sentence]:
    """Sentences of a ``token<TAB>label`` file; a malformed line is an error naming file and line."""
    sentences, cur = [], Sentence([], [], [])

    def close():
        nonlocal cur
        if cur.words:
            sentences.append(cur)
        cur = Sentence([], [], [])

    try:
        with path.open(encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    close()
                    continue
                fields = line.split("\t")
                if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                    raise InputError(f"{path}:{lineno}: expected 'token<TAB>label', got {line[:80]!r}")
                word, label = fields[0].strip(), fields[1].strip()
                if word == "-DOCSTART-":
                    close()
                    continue
                cur.words.append(word)
                cur.labels.append(label)
                cur.lines.append(lineno)
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    close()
    if not sentences:
        raise InputError(f"{path}: no sentences (expected 'token<TAB>label' lines)")
    return sentences


def load_ner(folder: Path, strict: bool = False) -> tuple[dict[str, list[Sentence]], list[str]]:
    """``({"train": [...], "devel": [...], "test": [...]}, labels)``; labels from train, "O" first.

    A train set without entity tags (every label ``O``) is warned about on stderr, or an error when ``strict``.
    """
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (expected train.tsv, devel.tsv, test.tsv)")
    splits, files = {}, {}
    for split, names in SPLIT_FILES.items():
        path = next((folder / n for n in names if (folder / n).is_file()), None)
        if path is None:
            raise InputError(f"{folder}: no {names[0]} (BioBERT NER layout: train.tsv, devel.tsv, test.tsv "
                             "with token<TAB>label lines)")
        splits[split], files[split] = read_tsv(path), path
    seen = {lab for s in splits["train"] for lab in s.labels}
    labels = sorted(seen, key=lambda lab: (lab != "O", lab))
    if seen == {"O"}:
        message = f"{files['train']}: no entity tags (every label is 'O'); entity F1 can only be 0"
        if strict:
            raise InputError(f"{message} (--strict)")
        print(f"warning: {message}", file=sys.stderr)
    for split in ("devel", "test"):
        for sent in splits[split]:
            for lab, line in zip(sent.labels, sent.lines):
                if lab not in seen:
                    raise InputError(f"{files[split]}:{line}: label '{lab}' never occurs in {files['train'].name} "
                                     f"(its labels: {labels})")
    return splits, labels


def plan_windows(piece_counts: list[int], limit: int, overlap: int) -> list[tuple[int, int]]:
    """Cut a sentence (pieces per word) into word ranges of at most ``limit`` pieces each.

    Consecutive windows share whole words worth at most ``overlap`` pieces; every word is in some window;
    each window starts and ends after the previous one (even when a word alone fills a window).
    """
    n, windows, start = len(piece_counts), [], 0
    while True:
        end, total = start, 0
        while end < n and total + piece_counts[end] <= limit:
            total += piece_counts[end]
            end += 1
        end = max(end, start + 1)  # a single word longer than the window: its pieces are cut to the limit
        windows.append((start, end))
        if end >= n:
            return windows
        # Back up over whole words for context, leaving room for the next new word so that the end advances.
        nxt, shared, room = end, 0, min(overlap, limit - min(piece_counts[end], limit))
        while nxt - 1 > start and shared + piece_counts[nxt - 1] <= room:
            nxt -= 1
            shared += piece_counts[nxt]
        start = nxt


def for_split_words(tokenizer):
    """The tokenizer, or a copy that cuts words given one by one as it cuts them in running text: byte-level BPE
    marks a word start with its leading space (Ġ), which words handed over separately lack unless the
    pre-tokenizer adds it (each word but a sentence's first would otherwise be cut as a continuation)."""
    import copy

    pre = tokenizer.backend_tokenizer.pre_tokenizer
    if type(pre).__name__ != "ByteLevel" or pre.add_prefix_space:
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    pre.add_prefix_space = True
    tokenizer.backend_tokenizer.pre_tokenizer = pre
    tokenizer.add_prefix_space = True  # RobertaTokenizer refuses split words without it
    return tokenizer


def encode_ner(sentences: list[Sentence], tokenizer, label2id: dict[str, int], max_length: int, overlap: int
               ) -> tuple[dict[str, list], list[Window]]:
    """Features (one per window) with labels on first pieces only, and the windows to rejoin predictions."""
    limit = max_length - 2  # room for [CLS] ... [SEP]
    enc = tokenizer([s.words for s in sentences], is_split_into_words=True, add_special_tokens=False)
    features = {"input_ids": [], "labels": []}
    windows = []
    for i, sent in enumerate(sentences):
        pieces = [[] for _ in sent.words]
        for piece, word in zip(enc["input_ids"][i], enc.word_ids(i)):
            pieces[word].append(piece)
        # A word the tokenizer drops entirely (control characters) still needs a position for its label.
        pieces = [(p or [tokenizer.unk_token_id])[:limit] for p in pieces]
        for start, end in plan_windows([len(p) for p in pieces], limit, overlap):
            ids, labels, first = [tokenizer.cls_token_id], [-100], []
            for w in range(start, end):
                first.append(len(ids))
                ids.extend(pieces[w])
                labels.extend([label2id[sent.labels[w]]] + [-100] * (len(pieces[w]) - 1))
            ids.append(tokenizer.sep_token_id)
            labels.append(-100)
            features["input_ids"].append(ids)
            features["labels"].append(labels)
            windows.append(Window(i, start, end, first))
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = [[0] * len(ids) for ids in features["input_ids"]]
    return features, windows


def rejoin_scores(windows: list[Window], logits: list[np.ndarray], lengths: list[int]) -> list[np.ndarray]:
    """Per sentence (n_words, num_labels): each word's scores where it has the most context on both sides."""
    scores = [np.zeros((n, logits[0].shape[-1]), dtype=np.float32) if logits else np.zeros((n, 0)) for n in lengths]
    margin = [[-1.0] * n for n in lengths]
    for win, window_scores in zip(windows, logits):  # window_scores: (window length, num_labels)
        n = lengths[win.sentence]
        for k, w in enumerate(range(win.start, win.end)):
            left = w - win.start if win.start > 0 else float("inf")  # a sentence edge is not a cut
            right = win.end - 1 - w if win.end < n else float("inf")
            if min(left, right) > margin[win.sentence][w]:
                margin[win.sentence][w] = min(left, right)
                scores[win.sentence][w] = window_scores[win.first_piece[k]]
    return scores


def rejoin(windows: list[Window], logits: list[np.ndarray], lengths: list[int]) -> list[list[int]]:
    """Per sentence, per word: the label id predicted where the word has the most context on both sides."""
    return [s.argmax(axis=1).tolist() for s in rejoin_scores(windows, logits, lengths)]


def with_augmented_copies(sentences: list[Sentence], plan) -> list[Sentence]:
    """The training sentences followed by ``--augment`` copies: entity words (gold label not ``O``) kept, context
    words replaced; a copy's labels are placeholders (``O``) that training never reads (``gold`` False)."""
    if not plan.augment:
        return sentences
    from .augment import augment, cached

    rows = [[s.words] for s in sentences]
    keeps = [[[lab != "O" for lab in s.labels]] for s in sentences]
    what = {"inputs": rows, "keep": keeps, "k": plan.augment, "seed": plan.augment_seed,
            "source": plan.augmenter.source, "mlm": plan.teacher.base_model if "mlm" in plan.augmenter.source else None}
    started = time.perf_counter()
    copies = cached(plan.teacher.cache_dir, what,
                    lambda: augment(rows, keeps, plan.augment, plan.augment_seed, plan.augmenter))
    plan.augment_seconds = round(time.perf_counter() - started, 2)
    return sentences + [Sentence(words, ["O"] * len(words), [0] * len(words), gold=False) for _i, (words,) in copies]


def ner_teacher_outputs(sentences: list[Sentence], windows: list[Window], student_ids: list[list[int]],
                        labels: list[str], plan, args) -> list[np.ndarray]:
    """Per student window (L, C): the fine-tuned teacher's logits for each word, in this run's label order, on
    the word's first piece (NaN elsewhere). The teacher reads the same words with its own tokenizer; words are
    the unit both share."""
    from .task_teacher import check_labels, load_teacher_tokenizer, teacher_outputs
    from .training import max_sequence_length

    order = check_labels(plan.teacher, labels, False, False)
    tokenizer = for_split_words(load_teacher_tokenizer(plan.teacher, word_aligned=True))
    max_length = max_sequence_length(plan.teacher.model_dir, tokenizer, args.max_length)
    overlap = min(args.window_overlap, (max_length - 2) // 2)
    label2id = {lab: i for i, lab in enumerate(labels)}
    feats, teacher_windows = encode_ner(sentences, tokenizer, label2id, max_length, overlap)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    outputs, plan.teacher_seconds = teacher_outputs(plan.teacher, "token", feats, args.eval_batch_size, plan.device,
                                                    plan.dtype, pad_id)
    words = rejoin_scores(teacher_windows, [o[:, order] for o in outputs], [len(s.words) for s in sentences])
    per_window = []
    for win, ids in zip(windows, student_ids):
        target = np.full((len(ids), len(labels)), np.nan, dtype=np.float32)
        for k, w in enumerate(range(win.start, win.end)):
            target[win.first_piece[k]] = words[win.sentence][w]
        per_window.append(target)
    return per_window


def entity_scores(true: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (seqeval, conlleval rules)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"precision": float(precision_score(true, pred, zero_division=0)),
            "recall": float(recall_score(true, pred, zero_division=0)),
            "f1": float(f1_score(true, pred, zero_division=0))}


def run_ner(args) -> dict:
    """Fine-tune ``args.model`` on one NER folder over the lr x seed sweep; returns the summary."""
    from .sweep import make_runner, make_spec, run_sweep
    from .task_teacher import loss_function, plan_distillation
    from .training import load_tokenizer, max_sequence_length, predict

    folder = Path(args.data)
    spec = make_spec(args, "ner", folder.resolve().name, ["test_precision", "test_recall", "test_f1"])
    splits, labels = load_ner(folder, strict=args.strict)
    tokenizer = for_split_words(load_tokenizer(args.tokenizer or args.model))
    max_length = max_sequence_length(args.model, tokenizer, args.max_length)
    if max_length < 3:
        raise InputError(f"--max-length {max_length}: too short for [CLS] word [SEP]")
    overlap = min(args.window_overlap, (max_length - 2) // 2)
    label2id = {lab: i for i, lab in enumerate(labels)}
    plan = plan_distillation(args, "ner", spec.task)
    train = with_augmented_copies(splits["train"], plan) if plan else splits["train"]
    train_features, train_windows = encode_ner(train, tokenizer, label2id, max_length, overlap)
    loss_fn = None
    if plan:
        for labs, win in zip(train_features["labels"], train_windows):
            if not train[win.sentence].gold:
                labs[:] = [-100] * len(labs)
        loss_fn = loss_function(plan, "token", args.model, tokenizer, False)  # first: its refusals cost no teacher pass
        train_features["teacher"] = ner_teacher_outputs(train, train_windows, train_features["input_ids"], labels,
                                                        plan, args)
        spec.settings.update(plan.describe(), augmented_sentences=len(train) - len(splits["train"]))
    evals = {s: encode_ner(splits[s], tokenizer, label2id, max_length, overlap) for s in ("devel", "test")}

    def evaluate(model, device, dtype, pad_id):
        metrics = {}
        for split, (features, windows) in evals.items():
            logits = predict(model, features, args.eval_batch_size, device, dtype, pad_id)
            preds = rejoin(windows, logits, [len(s.words) for s in splits[split]])
            pred_tags = [[labels[i] for i in p] for p in preds]
            scores = entity_scores([s.labels for s in splits[split]], pred_tags)
            metrics.update({f"{split}_{k}": v for k, v in scores.items()})
        return metrics, metrics["devel_f1"]

    spec.settings.update(max_length=max_length, window_overlap=overlap, labels=labels,
                         sentences={s: len(v) for s, v in splits.items()},
                         windows={"train": len(train_features["input_ids"]),
                                  **{s: len(w) for s, (_, w) in evals.items()}})
    run_one = make_runner(args, spec, "token", dict(enumerate(labels)), False, tokenizer, train_features, evaluate,
                          loss_fn=loss_fn)
    return run_sweep(spec, run_one)
