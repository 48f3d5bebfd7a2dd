"""Zero-shot sentence similarity: how well a model's pooled sentence embeddings rank sentence pairs, untuned.

The score of a pair is the cosine of the two sentences' embeddings (the mean of the last layer's real-token
vectors, or ``[CLS]``); the result is the Spearman (and Pearson) correlation of those scores with the gold
similarities, e.g. the STS Benchmark's test split. Nothing is fine-tuned: it measures what the encoder itself
carries, which for a student of a sentence-embedding teacher is what distillation kept.

    python -m minialbert.sentence_similarity --model runs/cpu/distill/export --data ../shared/data/glue/stsb/sts-test.tsv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel

from .finetune.glue import TASKS, read_split
from .finetune.metrics import pearson, spearman
from .modeling_minialbert import pool_hidden
from .finetune import InputError
from .finetune.training import load_tokenizer

POOLINGS = ("mean", "cls")


@torch.no_grad()
def embed(model, tokenizer, sentences: list[str], pooling: str, batch_size: int = 64,
          max_length: int = 128) -> torch.Tensor:
    """(N, H) fp32 sentence embeddings of ``sentences`` (eval mode, no gradients)."""
    model.eval()
    out = []
    for i in range(0, len(sentences), batch_size):
        enc = tokenizer(sentences[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        out.append(pool_hidden(hidden.float(), enc["attention_mask"], pooling))
    return torch.cat(out)


def zero_shot_similarity(model, tokenizer, pairs: dict[str, list], pooling: str) -> dict[str, float]:
    """``pairs``: columns sentence1, sentence2, label (gold similarity)."""
    a = embed(model, tokenizer, pairs["sentence1"], pooling)
    b = embed(model, tokenizer, pairs["sentence2"], pooling)
    scores = torch.nn.functional.cosine_similarity(a, b, dim=-1).numpy()
    gold = np.asarray(pairs["label"], dtype=np.float64)
    return {"spearman": spearman(scores, gold), "pearson": pearson(scores, gold), "pairs": len(gold)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minialbert.sentence_similarity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model folder (MiniALBERT export or any Hugging Face encoder)")
    p.add_argument("--data", required=True, help="an STS-B split file (the STS Benchmark's TSV or GLUE's)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if not Path(args.data).is_file():
            raise InputError(f"{args.data}: no such file (expected an STS-B split: the benchmark's TSV or GLUE's)")
        pairs = read_split(TASKS["stsb"], Path(args.data))
        tokenizer = load_tokenizer(args.model)
        model = AutoModel.from_pretrained(args.model, trust_remote_code=True)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = {"model": args.model, "data": args.data, "pooling": args.pooling,
              **zero_shot_similarity(model, tokenizer, pairs, args.pooling)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
