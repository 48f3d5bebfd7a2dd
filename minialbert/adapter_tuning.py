"""Adapter tuning of a MiniALBERT model: add adapters, freeze all but them and the task head, save and load just
those weights. A mixin of ``MiniAlbertPreTrainedModel``; ships with every export, next to
``modeling_minialbert.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .recursion_parts import RecursionAdapters

ADAPTER_WEIGHTS_NAME = "adapters.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"


class AdapterTuning:
    """Needs of its model: ``config``, ``_base()`` (the MiniAlbertModel holding ``adapters`` and ``layer``),
    ``_init_weights`` and ``_head_prefixes``."""

    def add_adapters(self, reduction_factor: int | None = None) -> None:
        """Give every recursion fresh adapters (no-op when the model already has them)."""
        base = self._base()
        if base.adapters is not None:
            return
        if reduction_factor is not None:
            self.config.adapter_reduction_factor = reduction_factor
        self.config.use_adapters = True
        self.config.validate()
        base.adapters = nn.ModuleList(RecursionAdapters(self.config) for _ in range(self.config.num_recursions))
        base.adapters.apply(self._init_weights)
        base.adapters.to(next(base.layer.parameters()).device)

    def _is_adapter_or_head(self, name: str) -> bool:
        return ".adapters." in f".{name}" or name.startswith(self._head_prefixes)

    def train_adapters_only(self) -> dict[str, int]:
        """Freeze everything but the adapters and the task head (adding adapters if missing).

        Returns the parameter counts ``{"trainable": n, "frozen": m}``.
        """
        self.add_adapters()
        counts = {"trainable": 0, "frozen": 0}
        for name, p in self.named_parameters():
            p.requires_grad_(self._is_adapter_or_head(name))
            counts["trainable" if p.requires_grad else "frozen"] += p.numel()
        return counts

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapters' and the task head's weights: all that adapter tuning changes."""
        return {k: v for k, v in self.state_dict().items() if self._is_adapter_or_head(k)}

    def save_adapters(self, directory: str | Path) -> Path:
        """Write the adapters and head (``adapters.safetensors``) and what they fit (``adapter_config.json``)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.adapter_state_dict().items()}
        meta = {
            "model_class": type(self).__name__,
            "hidden_size": self.config.hidden_size,
            "num_recursions": self.config.num_recursions,
            "adapter_reduction_factor": self.config.adapter_reduction_factor,
            "num_labels": self.config.num_labels,
            "id2label": {str(k): v for k, v in self.config.id2label.items()},
            "problem_type": self.config.problem_type,
        }
        # Its own small rename, not data_prep.files: this file ships as remote code and imports no training code.
        tmp = directory / (ADAPTER_WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(directory / ADAPTER_WEIGHTS_NAME)
        (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        return directory / ADAPTER_WEIGHTS_NAME

    def load_adapters(self, directory: str | Path) -> None:
        """Load adapters + head saved by ``save_adapters`` onto this (base) model, strictly."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / ADAPTER_CONFIG_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: no adapter config (expected a folder written by save_adapters)")
        meta = json.loads(meta_path.read_text())
        for key in ("hidden_size", "num_recursions"):
            if meta[key] != getattr(self.config, key):
                raise ValueError(f"{meta_path}: {key}={meta[key]} but the base model has {getattr(self.config, key)}")
        self.add_adapters(meta["adapter_reduction_factor"])
        tensors = load_file(str(directory / ADAPTER_WEIGHTS_NAME))
        expected = set(self.adapter_state_dict())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise ValueError(f"{directory / ADAPTER_WEIGHTS_NAME}: missing keys {missing}, unexpected keys {unexpected}")
        self.load_state_dict(tensors, strict=False)
