"""Builders shared by the data-prep and reader tests: tiny real tokenizers and small corpora written to disk."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
WORDS = ("the cell protein gene patient study result cancer treatment tumor blood brain heart lung kidney "
         "liver model data method analysis effect group level risk dose trial week year month day small "
         "large high low increase decrease significant clinical human mouse receptor expression pathway").split()


def make_texts(n_docs: int, seed: int = 0, min_words: int = 5, max_words: int = 400) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for i in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        docs.append(f"doc{i} " + " ".join(words) + ".")
    return docs


def build_wordpiece_tokenizer(out_dir: str) -> str:
    """A ~110-token BERT WordPiece tokenizer for WORDS, saved with save_pretrained. The vocabulary is written out,
    not trained: the tokenizers trainer breaks ties differently in every process, and the tests need the same
    token ids (so the same shards) on every machine. Three in four of WORDS are whole tokens; the rest split into
    pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    chars = sorted(set("".join(WORDS)) | set("0123456789.doc"))
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars), "doc",
              *(w for i, w in enumerate(sorted(WORDS)) if i % 4)]
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                      sep_token="[SEP]", mask_token="[MASK]").save_pretrained(out_dir)
    return out_dir


def build_sentencepiece_tokenizer(out_dir: str) -> str:
    """A tiny unigram SentencePiece model trained with the sentencepiece library, wrapped as ALBERT's tokenizer."""
    import sentencepiece as spm
    from transformers import AlbertTokenizer

    raw = out_dir + "_raw"
    os.makedirs(raw, exist_ok=True)
    corpus = os.path.join(raw, "corpus.txt")
    with open(corpus, "w") as f:
        f.write("\n".join(make_texts(300, seed=2)))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(raw, "spiece"), vocab_size=150,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, unk_id=1, bos_id=-1,
                                   eos_id=-1, user_defined_symbols=["[CLS]", "[SEP]", "[MASK]"], minloglevel=2)
    with open(os.path.join(raw, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "AlbertTokenizer"}, f)
    AlbertTokenizer.from_pretrained(raw).save_pretrained(out_dir)
    return out_dir


def write_jsonl(path: str, texts: list[str], field: str = "text") -> str:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({field: t, "id": len(t)}) + "\n")
    return path


def pack(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user or a Slurm task would."""
    proc = subprocess.run([PYTHON, "-m", "data_prep.pack_corpus", "--no-progress", *args], cwd=REPO,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pack_corpus failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def tree(folder) -> dict[str, str]:
    """relative path -> sha256 of every file under folder (hidden temporaries included)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out
