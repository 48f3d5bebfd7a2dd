"""The fine-tuning loop shared by GLUE and NER: build the model, train, predict, save the weights.

Features are plain dicts of lists, one entry per example: ``input_ids`` (and ``token_type_ids`` when the
tokenizer makes them) as lists of ints, ``labels`` as an int/float (sequence tasks) or a list of ints aligned
with ``input_ids`` (token tasks, -100 where no label). Batches are padded to their longest example.
AdamW with a linear warm-up/decay schedule, gradient clipping, bf16 autocast where the device has it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
    set_seed,
)

import minialbert  # noqa: F401  (registers MiniALBERT with the Auto classes)

from ..param_groups import weight_decay_groups
from ..precision import bf16_supported
from ..remote_code import add_remote_code
from . import InputError

HEADS = {"sequence": AutoModelForSequenceClassification, "token": AutoModelForTokenClassification}


@dataclass
class TrainConfig:
    """One training run's optimisation settings."""

    lr: float
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    autocast_dtype: torch.dtype | None  # torch.bfloat16, or None for fp32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    progress: bool = True
    desc: str = "train"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def pick_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """``auto``: bf16 where the device supports it, else fp32; ``bf16`` insists; ``fp32`` never autocasts."""
    if precision == "fp32":
        return None
    if bf16_supported(device):
        return torch.bfloat16
    if precision == "bf16":
        raise InputError(f"--precision bf16: {device} has no native bf16 support (use --precision auto or fp32)")
    return None


def load_tokenizer(path: str | Path):
    """A fast tokenizer (NER needs word ids) from a model folder or a tokenizer folder."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: tokenizer folder not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: no loadable tokenizer ({str(e).splitlines()[0]}); pass --tokenizer DIR") from None
    if not tokenizer.is_fast:
        raise InputError(f"{path}: tokenizer is not a fast (tokenizers-backed) tokenizer; word alignment needs one")
    return tokenizer


def build_model(model_dir: str | Path, head: str, id2label: dict[int, str], regression: bool, adapters_only: bool,
                similarity_scale: float = 1.0):
    """Load an encoder folder with a fresh task head (``head`` "similarity": no head, a bi-encoder scoring
    pairs by cosine x ``similarity_scale``, ``similarity.PairSimilarity``); returns ``(model, {"trainable": n,
    "frozen": m})``. ``adapters_only`` freezes all but the adapters and the head (MiniALBERT models only).
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"{model_dir}: not a model folder (expected config.json and weights from save_pretrained)")
    if head == "similarity":
        from .similarity import PairSimilarity, pooling_of

        encoder = AutoModel.from_pretrained(str(model_dir))
        model = PairSimilarity(encoder, pooling_of(model_dir, encoder.config), similarity_scale)
        return model, _freeze(model, encoder, model_dir, adapters_only)
    kwargs = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if regression:
        kwargs["problem_type"] = "regression"
    # A folder that already holds a task head of another size gets a fresh head of the right size.
    model = HEADS[head].from_pretrained(str(model_dir), ignore_mismatched_sizes=True, **kwargs)
    return model, _freeze(model, model, model_dir, adapters_only)


def _freeze(model, minialbert_model, model_dir: Path, adapters_only: bool) -> dict[str, int]:
    """Parameter counts of ``model``, after freezing all but adapters and head where ``adapters_only``."""
    if adapters_only:
        if not hasattr(minialbert_model, "train_adapters_only"):
            raise InputError(
                f"--adapters-only needs a MiniALBERT model; {model_dir} holds a '{model.config.model_type}' model"
            )
        counts = minialbert_model.train_adapters_only()
    else:
        counts = {"trainable": sum(p.numel() for p in model.parameters()), "frozen": 0}
    return counts


def save_weights(model, tokenizer, directory: Path, adapters_only: bool) -> Path:
    """Adapter-only runs keep just adapters + head (``adapters.safetensors``); full runs a whole model folder (a
    bi-encoder: its encoder)."""
    from .similarity import PairSimilarity

    if isinstance(model, PairSimilarity):
        model = model.encoder
    if adapters_only:
        model.save_adapters(directory)
    else:
        model.save_pretrained(str(directory))
        if model.config.model_type == "minialbert":
            add_remote_code(directory)  # loads where only torch and transformers are (trust_remote_code=True)
        tokenizer.save_pretrained(str(directory))
    return directory


def batches(
    features: dict[str, list], batch_size: int, pad_id: int, generator: torch.Generator | None = None
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Yield ``(indices, batch)``: shuffled when a generator is given, each batch padded to its longest example."""
    n = len(features["input_ids"])
    order = torch.randperm(n, generator=generator).numpy() if generator is not None else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        batch = {}
        for suffix in ("", "_b") if "input_ids_b" in features else ("",):  # a bi-encoder's second sentences
            seqs = [features["input_ids" + suffix][i] for i in idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)  # (B, L)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = 1
            batch.update({"input_ids" + suffix: ids, "attention_mask" + suffix: mask})
        ids = batch["input_ids"]
        if "token_type_ids" in features:
            types = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                t = features["token_type_ids"][i]
                types[row, : len(t)] = torch.tensor(t)
            batch["token_type_ids"] = types
        if "teacher" in features:  # task distillation's targets: (1, C) per example, or (L_i, C) per window
            rows = [features["teacher"][i] for i in idx]
            if len(rows[0]) == 1 and not isinstance(features["labels"][idx[0]], list):
                batch["teacher"] = torch.from_numpy(np.concatenate(rows))  # (B, C)
            else:
                soft = torch.full((len(idx), ids.shape[1], rows[0].shape[1]), float("nan"))  # NaN: no target
                for row, t in enumerate(rows):
                    soft[row, : len(t)] = torch.from_numpy(t)
                batch["teacher"] = soft  # (B, L, C)
        if "labels" in features:
            first = features["labels"][idx[0]]
            if isinstance(first, list):  # token labels (B, L), -100 on padding
                labels = torch.full_like(ids, -100)
                for row, i in enumerate(idx):
                    lab = features["labels"][i]
                    labels[row, : len(lab)] = torch.tensor(lab)
            else:
                dtype = torch.float if isinstance(first, float) else torch.long
                labels = torch.tensor([features["labels"][i] for i in idx], dtype=dtype)  # (B,)
            batch["labels"] = labels
        yield idx, batch


def _autocast(cfg_device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(cfg_device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def train(model, features: dict[str, list], cfg: TrainConfig, pad_id: int, loss_fn=None) -> dict[str, float]:
    """Train in place; returns ``{"train_loss": mean loss of the last epoch, "steps": n, "train_seconds": s}``.
    ``loss_fn(model, batch)`` replaces the model's own loss (task distillation: ``distill_loss``)."""
    set_seed(cfg.seed)
    model.to(cfg.device).train()
    optimizer = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(features["input_ids"]) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    generator = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=total, desc=cfg.desc, unit="step", disable=not cfg.progress, leave=False)
    started, epoch_loss = time.perf_counter(), float("nan")
    for _epoch in range(cfg.epochs):
        losses = []
        for _idx, batch in batches(features, cfg.batch_size, pad_id, generator):
            batch = {k: v.to(cfg.device, non_blocking=True) for k, v in batch.items()}
            with _autocast(cfg.device, cfg.autocast_dtype):
                loss = loss_fn(model, batch) if loss_fn else model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        epoch_loss = float(np.mean(losses))
    bar.close()
    return {"train_loss": epoch_loss, "steps": total, "train_seconds": round(time.perf_counter() - started, 2)}


@torch.no_grad()
def predict(
    model, features: dict[str, list], batch_size: int, device: torch.device, dtype: torch.dtype | None, pad_id: int
) -> list[np.ndarray]:
    """Float32 logits per example, in input order: (num_labels,) for sequence heads, (L_i, num_labels) for token heads."""
    model.to(device).eval()
    out: list[np.ndarray] = []
    feats = {k: v for k, v in features.items() if k not in ("labels", "teacher")}
    for idx, batch in batches(feats, batch_size, pad_id):
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        with _autocast(device, dtype):
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        logits = logits.float().cpu().numpy()  # (B, C) or (B, L, C)
        if logits.ndim == 3:
            out.extend(logits[row, :n] for row, n in enumerate(lengths))
        else:
            out.extend(logits)
    return out


def max_sequence_length(model_dir: str | Path, tokenizer, requested: int) -> int:
    """``requested``, capped by the model's position embeddings and the tokenizer's own limit."""
    import json

    config = json.loads((Path(model_dir) / "config.json").read_text()) if (Path(model_dir) / "config.json").is_file() else {}
    limits = [requested, config.get("max_position_embeddings", requested)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:  # "unlimited" is stored as 1e30
        limits.append(tokenizer.model_max_length)
    return int(min(limits))
