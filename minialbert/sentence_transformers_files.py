"""The sentence-transformers files of a student export: a student of a sentence-transformers teacher pools and
normalises like its teacher when loaded with ``SentenceTransformer``. Plain JSON, copied from the teacher's folder
and resized to the student; sentence-transformers itself is optional (``pip install minialbert[sentence]``).

    SentenceTransformer(EXPORT, trust_remote_code=True)   # or without trust_remote_code after ``import minialbert``

sentence-transformers (v6) never lets a folder's own files grant ``trust_remote_code``, so a caller without
minialbert must pass it, as for ``AutoModel``.
"""

from __future__ import annotations

import json
from pathlib import Path

MODULES = "modules.json"
TRANSFORMER_CONFIG = "sentence_bert_config.json"
MODEL_CONFIG = "config_sentence_transformers.json"  # prompts, similarity function
# The pooling keys sentence-transformers wrote before v6 (one flag per mode), in the order it concatenates modes.
LEGACY_POOLING_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                       "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                       "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
# Keys of sentence_bert_config.json that configure the teacher's architecture, not the student's.
TEACHER_ONLY_KEYS = ("model_args", "model_kwargs", "config_args", "config_kwargs")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")


def _modules(teacher_dir: Path) -> list[dict] | None:
    path = teacher_dir / MODULES
    return json.loads(path.read_text()) if path.is_file() else None


def _kind(module: dict) -> str:
    """'Pooling' for ``sentence_transformers.models.Pooling`` (before v6) and for v6's
    ``sentence_transformers.sentence_transformer.modules.pooling.Pooling``; a module of other code as written."""
    ref = module["type"]
    return ref.rsplit(".", 1)[-1] if ref.startswith("sentence_transformers.") else ref


def teacher_pooling(teacher_dir: Path) -> str | None:
    """The teacher's sentence-transformers pooling: 'mean', 'cls', 'max', ... (several modes joined by '+');
    None when ``teacher_dir`` is not a sentence-transformers folder or has no Pooling module."""
    teacher_dir = Path(teacher_dir)
    for module in _modules(teacher_dir) or []:
        if _kind(module) == "Pooling":
            config = _read_json(teacher_dir / module["path"] / "config.json")
            modes = (config.get("pooling_mode")
                     or [mode for key, mode in LEGACY_POOLING_KEYS.items() if config.get(key)] or "mean")
            return modes if isinstance(modes, str) else "+".join(modes)
    return None


def write_sentence_transformers_files(teacher_dir: Path, out: Path, hidden_size: int, max_seq_length: int) -> bool:
    """Make ``out`` (a saved student with the teacher's tokenizer) a sentence-transformers folder like
    ``teacher_dir``: its modules.json with the student at the root, its Pooling resized to ``hidden_size``, its
    Normalize, its sentence_bert_config.json (max_seq_length capped at ``max_seq_length``) and
    config_sentence_transformers.json. Returns False, writing nothing, when the teacher is no such folder; raises
    ValueError, writing nothing, when it has a module other than Transformer, Pooling and Normalize (a Dense
    layer's weights map the teacher's hidden states, not the student's)."""
    teacher_dir, out = Path(teacher_dir), Path(out)
    modules = _modules(teacher_dir)
    if modules is None:
        return False
    for i, module in enumerate(modules):
        if _kind(module) not in (("Transformer",) if i == 0 else ("Pooling", "Normalize")):
            raise ValueError(f"{teacher_dir / MODULES}: module {module['name']} ({module['type']}) cannot be carried "
                             "to the student; only a Transformer followed by Pooling and Normalize can")
    transformer = _read_json(teacher_dir / modules[0]["path"] / TRANSFORMER_CONFIG)
    transformer = {k: v for k, v in transformer.items() if k not in TEACHER_ONLY_KEYS}
    if transformer.get("max_seq_length"):  # else the tokenizer's model_max_length rules, capped at the positions
        transformer["max_seq_length"] = min(transformer["max_seq_length"], max_seq_length)
    _write_json(out / TRANSFORMER_CONFIG, transformer)
    _write_json(out / MODULES, [{**modules[0], "path": ""}, *modules[1:]])  # the student's weights are at the root
    if (teacher_dir / MODEL_CONFIG).is_file():
        _write_json(out / MODEL_CONFIG, _read_json(teacher_dir / MODEL_CONFIG))
    for module in modules[1:]:
        config = _read_json(teacher_dir / module["path"] / "config.json")
        if _kind(module) == "Pooling":  # the width's key: v6's, or the one earlier versions wrote
            width = "embedding_dimension" if "embedding_dimension" in config else "word_embedding_dimension"
            config[width] = hidden_size
        if config:  # Normalize has none before v6
            _write_json(out / module["path"] / "config.json", config)
    return True
