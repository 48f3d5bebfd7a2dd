"""tokenizer_fingerprint: the hash that ties packed shards to the tokenizer that made them (stdlib only).

minialbert.data re-exports it: the packer records it in manifest.json, the trainer compares it with the
teacher's tokenizer folder.
"""

from __future__ import annotations

import hashlib
import json
import os

# Files that define a tokenizer's ids; model weights and configs in the same folder are not part of it.
# SentencePiece models by family: ALBERT/T5 spiece.model, XLM-R sentencepiece.bpe.model, DeBERTa-v2/v3 spm.model.
_VOCAB_FILES = ("vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "spm.model",
                "tokenizer.model")
_SPECIAL_KEYS = ("pad_token", "cls_token", "sep_token", "mask_token", "unk_token", "bos_token", "eos_token",
                 "do_lower_case", "added_tokens_decoder")


def tokenizer_fingerprint(tokenizer_dir: str) -> str:
    """sha256 over the files that define the tokenizer's ids (no transformers import).

    tokenizer.json is hashed without its truncation/padding settings (they do not change ids); from
    tokenizer_config.json / special_tokens_map.json only the special tokens count. Model weights are ignored.
    """
    if not os.path.isdir(tokenizer_dir):
        raise ValueError(f"{tokenizer_dir}: no such tokenizer folder")
    h = hashlib.sha256()
    found = False
    tok_json = os.path.join(tokenizer_dir, "tokenizer.json")
    if os.path.isfile(tok_json):
        with open(tok_json, encoding="utf-8") as f:
            spec = json.load(f)
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(b"tokenizer.json\0" + json.dumps(spec, sort_keys=True).encode())
        found = True
    for name in _VOCAB_FILES:
        path = os.path.join(tokenizer_dir, name)
        if os.path.isfile(path) and not found:  # tokenizer.json already holds the vocabulary when present
            with open(path, "rb") as f:
                h.update(name.encode() + b"\0" + f.read())
            found = True
    if not found:
        raise ValueError(f"{tokenizer_dir}: no tokenizer.json, vocab.txt or sentencepiece model")
    special = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(tokenizer_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                special.update({k: v for k, v in json.load(f).items() if k in _SPECIAL_KEYS})
    h.update(json.dumps(special, sort_keys=True, default=str).encode())
    return h.hexdigest()
