"""Count a student's unique parameters by part.

    python -m minialbert.params CONFIG_OR_DIR [--json]

CONFIG_OR_DIR: a model folder or a ``config.json`` of this project (``model_type: minialbert``) or of the
original code (``model_type: albert``). The model is built on the meta device, so nothing is allocated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from .configuration_minialbert import MiniAlbertConfig

PARTS = ("embeddings", "projection", "shared_layer", "recursion_deltas", "adapters", "mlm_head", "task_head")
_PART_OF_PREFIX = {
    "embeddings.": "embeddings",
    "embedding_projection.": "projection",
    "layer.": "shared_layer",
    "final_norm.": "shared_layer",  # the modernbert form's last LayerNorm: shared, applied once
    "relative_embeddings.": "shared_layer",  # the deberta form's relative positions, read by every recursion
    "relative_norm.": "shared_layer",
    "deltas.": "recursion_deltas",
    "adapters.": "adapters",
    "mlm_head.": "mlm_head",
    "classifier.": "task_head",
}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Unique parameters (shared tensors counted once) by part, plus ``encoder`` (no heads) and ``total``."""
    counts = dict.fromkeys(PARTS, 0)
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        name = name.removeprefix("minialbert.")
        part = next((v for k, v in _PART_OF_PREFIX.items() if name.startswith(k)), None)
        if part is None:
            raise ValueError(f"parameter {name!r} belongs to no known part")
        counts[part] += p.numel()
    encoder = ("embeddings", "projection", "shared_layer", "recursion_deltas", "adapters")
    counts["encoder"] = sum(counts[p] for p in encoder)
    counts["total"] = sum(counts[p] for p in PARTS)
    return counts


def load_config(path: str | Path) -> MiniAlbertConfig:
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: not found (expected a model folder or a config.json)")
    raw = json.loads(file.read_text())
    if raw.get("model_type") == "albert":
        from .convert import reference_config

        return reference_config(raw, str(file))
    if raw.get("model_type") != MiniAlbertConfig.model_type:
        raise ValueError(f"{file}: model_type is {raw.get('model_type')!r}, expected 'minialbert' or 'albert'")
    return MiniAlbertConfig.from_dict(raw)


def count_for_config(config: MiniAlbertConfig) -> dict[str, int]:
    from .modeling_minialbert import MiniAlbertForMaskedLM

    with torch.device("meta"):
        model = MiniAlbertForMaskedLM(config)
    return count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minialbert.params", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="model folder or config.json")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        counts = count_for_config(load_config(args.path))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(counts))
        return 0
    for part, n in counts.items():
        print(f"{part:<14}{n:>14,}  ({n / 1e6:.2f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
