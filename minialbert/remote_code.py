"""Model folders that load without minialbert: the package's own configuration and modeling modules copied in,
and ``auto_map`` in config.json, so ``AutoModel*.from_pretrained(folder, trust_remote_code=True)`` works with only
torch + transformers (the Hub's convention for a custom architecture). Used by every export, ``convert
reference`` and the fully fine-tuned models ``finetune`` saves."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# The model's modules as the package has them (the modeling file imports the other two relatively).
CODE_FILES = ("configuration_minialbert.py", "modeling_minialbert.py", "blockwise_attention.py", "dropout.py",
              "recomputed.py", "recursion_parts.py", "positions.py",
              "adapter_tuning.py")
AUTO_MAP = {
    "AutoConfig": "configuration_minialbert.MiniAlbertConfig",
    "AutoModel": "modeling_minialbert.MiniAlbertModel",
    "AutoModelForMaskedLM": "modeling_minialbert.MiniAlbertForMaskedLM",
    "AutoModelForSequenceClassification": "modeling_minialbert.MiniAlbertForSequenceClassification",
    "AutoModelForTokenClassification": "modeling_minialbert.MiniAlbertForTokenClassification",
}
# What the copied modules may import: the standard library, torch, transformers and its own dependency safetensors.
STANDALONE_PACKAGES = frozenset({"torch", "transformers", "safetensors"})


def check_standalone_code(package_dir: Path = Path(__file__).parent) -> None:
    """Raise ImportError unless the model modules import only the standard library, torch, transformers,
    safetensors and each other (relatively) -- what transformers' loader (``check_imports``) accepts in a folder
    holding just these files. Uses the loader's own import scanner."""
    from transformers.dynamic_module_utils import get_imports, get_relative_imports

    problems = []
    for name in CODE_FILES:
        path = package_dir / name
        foreign = [m for m in get_imports(path) if m not in STANDALONE_PACKAGES and m not in sys.stdlib_module_names]
        siblings = [m for m in get_relative_imports(path) if f"{m}.py" not in CODE_FILES]
        if foreign or siblings:
            problems.append(f"{name} imports {', '.join(foreign + ['.' + m for m in siblings])}")
    if problems:
        raise ImportError("the model code cannot be shipped with an export: " + "; ".join(problems))


def add_remote_code(folder: str | Path) -> None:
    """Make a saved model folder load without minialbert: copy the package's own configuration and modeling
    modules into it and add ``auto_map`` to its config.json (``AutoModel*.from_pretrained(folder,
    trust_remote_code=True)``). With minialbert imported the package's classes are used and no remote code runs."""
    folder = Path(folder)
    check_standalone_code()
    for name in CODE_FILES:
        shutil.copyfile(Path(__file__).parent / name, folder / name)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {**config.get("auto_map", {}), **AUTO_MAP}
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
