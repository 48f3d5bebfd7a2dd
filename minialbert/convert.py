"""Import checkpoints saved by the original MiniALBERT code (nlpie-research/MiniALBERT).

    python -m minialbert.convert reference SRC OUT

SRC is a folder written by the original code's ``save_pretrained``: ``config.json`` with ``model_type: albert``
and the custom fields ``use_adapter``, ``reduction_factor``, ``embedding_size``, and ``model.safetensors`` or
``pytorch_model.bin`` in its key layout (the published miniALBERT / bio-miniALBERT / clinical-miniALBERT models
use it). OUT becomes a Hugging Face folder of this project's format (plus the tokenizer files found in SRC) that
carries its model code, so it loads with ``trust_remote_code=True`` where minialbert is not installed.
Every weight must be accounted for: a missing or unexpected key is an error listing them, never a random init.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

import torch

from data_prep.files import atomic_folder

from .configuration_minialbert import MiniAlbertConfig
from .modeling_minialbert import (
    MiniAlbertForMaskedLM,
    MiniAlbertForSequenceClassification,
    MiniAlbertForTokenClassification,
    MiniAlbertModel,
    MiniAlbertPreTrainedModel,
)
from .remote_code import add_remote_code

MODEL_CLASSES = {
    cls.__name__: cls
    for cls in (MiniAlbertModel, MiniAlbertForMaskedLM, MiniAlbertForSequenceClassification, MiniAlbertForTokenClassification)
}
_LAYER = "albert.encoder.albert_layer_groups.0.albert_layers.0."
# (pattern on a key relative to the original MiniAlbertModel, replacement relative to ours), first match wins.
_BASE_RULES = [
    (r"^albert\.embeddings\.(word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)\.", r"embeddings.\1."),
    (r"^projector\.", "embedding_projection."),
    (rf"^{re.escape(_LAYER)}attention\.(query|key|value|dense|LayerNorm)\.", r"layer.attention.\1."),
    (rf"^{re.escape(_LAYER)}ffn\.", "layer.ffn.ffn."),
    (rf"^{re.escape(_LAYER)}ffn_output\.", "layer.ffn.ffn_output."),
    (rf"^{re.escape(_LAYER)}full_layer_layer_norm\.", "layer.ffn.LayerNorm."),
    (r"^att_adapters\.(\d+)\.block\.0\.", r"adapters.\1.attention.down."),
    (r"^att_adapters\.(\d+)\.block\.2\.", r"adapters.\1.attention.up."),
    (r"^att_adapters\.(\d+)\.norm\.", r"adapters.\1.attention.LayerNorm."),
    (r"^mlp_adapters\.(\d+)\.block\.0\.", r"adapters.\1.ffn.down."),
    (r"^mlp_adapters\.(\d+)\.block\.2\.", r"adapters.\1.ffn.up."),
    (r"^mlp_adapters\.(\d+)\.norm\.", r"adapters.\1.ffn.LayerNorm."),
]
_HEAD_RULES = [
    (r"^vocab_transform\.", "mlm_head.transform."),
    (r"^vocab_layer_norm\.", "mlm_head.LayerNorm."),
    (r"^vocab_projector\.", "mlm_head.decoder."),
    (r"^classifier\.", "classifier."),
]
# Saved by the original code but never used by its forward: ALBERT's pooler (built with add_pooling_layer=True)
# and the position/token-type id buffers.
_DROPPED = re.compile(r"^albert\.(pooler\.|embeddings\.(position_ids|token_type_ids)$)")


class ConversionError(ValueError):
    """The source checkpoint does not fit the original MiniALBERT layout."""


def reference_config(src_config: dict, path: str = "config.json") -> MiniAlbertConfig:
    """Map the original code's AlbertConfig (+ custom fields) onto MiniAlbertConfig."""
    if src_config.get("model_type") != "albert":
        raise ConversionError(f"{path}: model_type is {src_config.get('model_type')!r}, expected 'albert' (original MiniALBERT)")
    for field in ("embedding_size", "use_adapter", "hidden_size", "num_hidden_layers", "vocab_size"):
        if field not in src_config:
            raise ConversionError(f"{path}: missing field '{field}' of an original MiniALBERT config")
    for field in ("num_hidden_groups", "inner_group_num"):
        if src_config.get(field, 1) != 1:
            raise ConversionError(f"{path}: {field}={src_config[field]}, expected 1 (one shared layer)")
    use_adapters = bool(src_config["use_adapter"])
    if use_adapters and "reduction_factor" not in src_config:
        raise ConversionError(f"{path}: use_adapter is true but 'reduction_factor' is missing")
    keep = {
        k: src_config[k]
        for k in (
            "vocab_size", "embedding_size", "hidden_size", "num_attention_heads", "intermediate_size", "hidden_act",
            "hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout_prob", "max_position_embeddings",
            "type_vocab_size", "layer_norm_eps", "initializer_range", "pad_token_id", "bos_token_id", "eos_token_id",
            "id2label", "label2id", "problem_type",
        )
        if k in src_config
    }
    return MiniAlbertConfig(
        num_recursions=src_config["num_hidden_layers"],
        use_adapters=use_adapters,
        adapter_reduction_factor=src_config.get("reduction_factor") or 16,
        **keep,
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def map_reference_state_dict(state: dict[str, torch.Tensor], base_prefix: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename original keys to ours. Returns (renamed tensors, keys that map to nothing)."""
    # A MiniAlbertFor* checkpoint wraps the original MiniAlbertModel as "albert." (so its ALBERT is "albert.albert.").
    wrapped = any(k.startswith("albert.albert.") for k in state)
    out, unknown = {}, []
    for key, tensor in state.items():
        if wrapped and key.startswith("albert."):
            inner, rules, prefix = key[len("albert."):], _BASE_RULES, base_prefix
        elif wrapped:
            inner, rules, prefix = key, _HEAD_RULES, ""
        else:
            inner, rules, prefix = key, _BASE_RULES, ""
        if _DROPPED.match(inner) and rules is _BASE_RULES:
            continue
        new = _rename(inner, rules)
        if new is None:
            unknown.append(key)
        else:
            out[prefix + new] = tensor
    return out, unknown


def read_reference_weights(src: Path) -> dict[str, torch.Tensor]:
    st, pt = src / "model.safetensors", src / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise ConversionError(f"{src}: no model.safetensors or pytorch_model.bin")


def load_reference_checkpoint(src: str | Path) -> MiniAlbertPreTrainedModel:
    """Build this project's model from an original MiniALBERT checkpoint folder, every key accounted for."""
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{config_path}: not found")
    raw = json.loads(config_path.read_text())
    config = reference_config(raw, str(config_path))
    arch = (raw.get("architectures") or ["MiniAlbertForMaskedLM"])[0]
    if arch not in MODEL_CLASSES:
        raise ConversionError(f"{config_path}: architectures[0]={arch!r}, expected one of {sorted(MODEL_CLASSES)}")
    cls = MODEL_CLASSES[arch]
    model = cls(config)
    base_prefix = "" if cls is MiniAlbertModel else "minialbert."
    state, unknown = map_reference_state_dict(read_reference_weights(src), base_prefix)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(unknown + [k for k in state if k not in expected])
    if missing or unexpected:
        raise ConversionError(f"{src}: missing keys {missing}; unexpected keys {unexpected}")
    bad = [f"{k} {tuple(v.shape)} != {tuple(expected[k].shape)}" for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        raise ConversionError(f"{src}: shape mismatch: {bad}")
    model.load_state_dict(state, strict=True)
    return model.eval()


TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "spiece.model",
    "sentencepiece.bpe.model", "added_tokens.json",
)


def convert_reference(src: str | Path, out: str | Path) -> Path:
    """Convert SRC (original layout) into OUT (this project's Hugging Face folder), written atomically."""
    src, out = Path(src), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConversionError(f"{out}: exists and is not empty; choose a new output folder")
    model = load_reference_checkpoint(src)
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp)
        add_remote_code(tmp)  # loads where only torch and transformers are installed (trust_remote_code=True)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, tmp / name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minialbert.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="kind", required=True)
    ref = sub.add_parser("reference", help="a checkpoint saved by the original MiniALBERT code")
    ref.add_argument("src", help="folder with config.json and model.safetensors / pytorch_model.bin")
    ref.add_argument("out", help="new folder for the converted model")
    args = parser.parse_args(argv)
    try:
        out = convert_reference(args.src, args.out)
    except (ConversionError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"converted {args.src} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
