"""Tokenisation and the paper's windowing: documents → rows of token ids (+ word-start flags).

windows mode (MiniALBERT): each document is tokenised once without special tokens, cut into windows of
`seq_len - n_special` tokens whose starts are `stride` apart (256/128: consecutive windows overlap by half),
the last window ending at the document's end; when a document has more than `max_windows` windows, that many
are drawn without replacement, keyed by (seed, unit, document number), and kept in document order. Each window
is wrapped in the tokenizer's own special tokens (BERT/ALBERT: [CLS] ... [SEP]).

packed mode: documents (each followed by the tokenizer's separator) are concatenated and cut into rows of
`seq_len` tokens including the special tokens; a unit's last row may be shorter.

Documents go to the validation split by a hash of (seed, unit, document number) < validation_fraction.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable, Iterator

import numpy as np

from data_prep.units import DataPrepError, mix64

ENCODE_BATCH_DOCS = 256  # documents per fast-tokenizer batch call
CHUNK_CACHE_LIMIT = 1_000_000  # distinct whitespace-separated chunks remembered (BERT tokenizers only)
# Characters str.split() separates on but BERT's normalizer deletes (control characters): a document holding
# one is encoded whole instead of chunk by chunk.
_SPLIT_DIFFERS = re.compile("[\x0b\x0c\x1c-\x1f\x85]")


def load_fast_tokenizer(tokenizer_dir: str):
    """AutoTokenizer from a local folder; must be a fast (Rust) tokenizer so the batch path exists."""
    if not os.path.isdir(tokenizer_dir):
        raise DataPrepError(f"--tokenizer {tokenizer_dir}: no such folder")
    from transformers import AutoTokenizer  # heavy import, only where tokenising happens

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    except (OSError, ValueError) as e:
        raise DataPrepError(f"--tokenizer {tokenizer_dir}: cannot load a tokenizer ({str(e).splitlines()[0]})") from e
    if not getattr(tokenizer, "is_fast", False):
        raise DataPrepError(f"--tokenizer {tokenizer_dir}: {type(tokenizer).__name__} is not a fast tokenizer")
    return tokenizer


def tokenizer_info(tokenizer) -> dict:
    """What the reader needs to know about the tokenizer, recorded in the manifest."""
    vocab_size = len(tokenizer)
    special = {name: getattr(tokenizer, f"{name}_token_id") for name in ("pad", "cls", "sep", "mask", "unk")}
    return {
        "class": type(tokenizer).__name__,
        "vocab_size": vocab_size,
        "special_ids": special,
        "all_special_ids": sorted(set(tokenizer.all_special_ids)),
        "id_dtype": "uint16" if vocab_size <= 1 << 16 else "uint32",
    }


class Windower:
    """Turns batches of document texts into rows; one per worker process (holds the Rust tokenizer)."""

    def __init__(self, tokenizer, seq_len: int, stride: int, max_windows: int, seed: int, mode: str,
                 validation_fraction: float):
        backend = tokenizer.backend_tokenizer
        # A private copy without the truncation/padding a tokenizer.json may carry (MiniLM's truncates at 128).
        from tokenizers import Tokenizer

        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.prefix, self.suffix = _special_affixes(self.backend)
        self._chunk_cache = {} if _chunk_compositional(self.backend) else None
        self.content_len = seq_len - len(self.prefix) - len(self.suffix)
        if self.content_len < 1:
            n_special = len(self.prefix) + len(self.suffix)
            raise DataPrepError(f"--seq-len {seq_len} leaves no room next to {n_special} special tokens")
        if mode == "windows" and not 0 < stride <= self.content_len:
            raise DataPrepError(f"--stride {stride}: expected 1..{self.content_len} (seq_len minus special tokens)")
        self.info = tokenizer_info(tokenizer)
        self.dtype = np.dtype(self.info["id_dtype"])
        self.word_start_table = _word_start_table(self.backend, self.info["vocab_size"], self.info["all_special_ids"])
        self.seq_len, self.stride, self.max_windows, self.seed, self.mode = seq_len, stride, max_windows, seed, mode
        self.validation_threshold = int(validation_fraction * 2.0**64)
        self._carry = {"train": np.zeros(0, np.int64), "validation": np.zeros(0, np.int64)}  # packed mode

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids without special tokens, one array per text, through the batched Rust path.

        BERT-style tokenizers (BertNormalizer + BertPreTokenizer + WordPiece) act on each whitespace-separated
        chunk independently, so ids(text) == concat(ids(chunk)): each distinct chunk is encoded once and
        remembered. Natural text repeats its words (Zipf), so most chunks are dictionary hits.
        """
        if self._chunk_cache is None:
            return [np.array(e.ids, dtype=np.int64) for e in self._encode_batch(texts)]
        cache = self._chunk_cache
        if len(cache) > CHUNK_CACHE_LIMIT:
            cache.clear()
        split = [None if _SPLIT_DIFFERS.search(t) else t.split() for t in texts]
        new = {c: None for chunks in split if chunks is not None for c in chunks if c not in cache}
        if new:
            cache.update(zip(new, (e.ids for e in self._encode_batch(list(new)))))
        whole = [t for t, chunks in zip(texts, split) if chunks is None]
        whole_ids = iter([e.ids for e in self._encode_batch(whole)] if whole else [])
        out = []
        for chunks in split:
            if chunks is None:
                out.append(np.array(next(whole_ids), dtype=np.int64))
            else:
                out.append(np.fromiter(itertools.chain.from_iterable(map(cache.__getitem__, chunks)), np.int64))
        return out

    def _encode_batch(self, texts: list[str]):
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets: faster
        return encode(texts, add_special_tokens=False)

    def is_validation(self, unit_hash: int, doc_number: int) -> bool:
        return mix64(self.seed, unit_hash, doc_number, 1) < self.validation_threshold

    def window_starts(self, n_tokens: int, unit_hash: int, doc_number: int) -> list[int]:
        c = self.content_len
        if n_tokens <= c:
            return [0]
        starts = list(range(0, n_tokens - c, self.stride)) + [n_tokens - c]
        if len(starts) > self.max_windows > 0:
            rng = np.random.default_rng([self.seed, unit_hash, doc_number])
            chosen = np.sort(rng.choice(len(starts), size=self.max_windows, replace=False))
            starts = [starts[i] for i in chosen]
        return starts

    def rows(self, docs: Iterable[str], unit_hash: int) -> Iterator[tuple[str, np.ndarray, int]]:
        """(split, row token ids, number of documents finished with this row) for a unit's documents."""
        doc_number = 0
        batch: list[str] = []
        self._carry = {split: np.zeros(0, np.int64) for split in self._carry}
        for text in docs:
            batch.append(text)
            if len(batch) == ENCODE_BATCH_DOCS:
                yield from self._rows_of_batch(batch, unit_hash, doc_number)
                doc_number += len(batch)
                batch = []
        if batch:
            yield from self._rows_of_batch(batch, unit_hash, doc_number)
        if self.mode == "packed":
            for split, carry in self._carry.items():
                if len(carry):
                    yield split, self._wrap(carry), 0
                self._carry[split] = carry[:0]

    def _rows_of_batch(self, texts: list[str], unit_hash: int, first_doc: int):
        prefix, suffix = self.prefix, self.suffix
        for i, ids in enumerate(self.encode(texts)):
            doc_number = first_doc + i
            split = "validation" if self.is_validation(unit_hash, doc_number) else "train"
            if self.mode == "packed":
                yield from self._packed_rows(split, ids)
                continue
            starts = self.window_starts(len(ids), unit_hash, doc_number)
            for s in starts:
                yield split, np.concatenate([prefix, ids[s:s + self.content_len], suffix]), 0
            yield split, None, 1  # marks the end of a document (for progress counts)

    def _packed_rows(self, split: str, ids: np.ndarray):
        carry = np.concatenate([self._carry[split], ids, self.suffix[-1:]])
        c = self.content_len
        n_full = len(carry) // c
        for r in range(n_full):
            yield split, self._wrap(carry[r * c:(r + 1) * c]), 0
        self._carry[split] = carry[n_full * c:]
        yield split, None, 1

    def _wrap(self, content: np.ndarray) -> np.ndarray:
        return np.concatenate([self.prefix, content, self.suffix])

    def word_starts(self, row: np.ndarray) -> np.ndarray:
        return self.word_start_table[row]


def _chunk_compositional(backend) -> bool:
    """True for the BERT pipeline, whose output for a text is the concatenation of its chunks' outputs."""
    names = [type(part).__name__ if part is not None else None
             for part in (backend.normalizer, backend.pre_tokenizer, backend.model)]
    return names == ["BertNormalizer", "BertPreTokenizer", "WordPiece"] and not backend.get_added_tokens_decoder() \
        or names == ["BertNormalizer", "BertPreTokenizer", "WordPiece"] and _added_tokens_are_special(backend)


def _added_tokens_are_special(backend) -> bool:
    # Added tokens are matched on the raw text before normalisation; a chunk boundary never splits the
    # bracketed special tokens ([CLS], [MASK]...), which contain no whitespace.
    return all(not any(ch.isspace() for ch in t.content) for t in backend.get_added_tokens_decoder().values())


def _special_affixes(backend) -> tuple[np.ndarray, np.ndarray]:
    """The ids the tokenizer puts before and after a single sequence (BERT: [CLS] / [SEP])."""
    probe = "hello world"
    plain = backend.encode(probe, add_special_tokens=False).ids
    full = backend.encode(probe, add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return np.array(full[:i], np.int64), np.array(full[i + len(plain):], np.int64)
    raise DataPrepError("tokenizer adds special tokens inside the sequence; cannot window it")


def _word_start_table(backend, vocab_size: int, special_ids: list[int]) -> np.ndarray:
    """(vocab_size,) bool: does this token begin a word? WordPiece: not '##'-prefixed; SentencePiece/BPE:
    carries the word-boundary marker ('▁' or 'Ġ'). Special tokens are never word starts (never masked)."""
    model = backend.model
    vocab = backend.get_vocab(with_added_tokens=True)
    table = np.zeros(max(vocab_size, max(vocab.values()) + 1), dtype=bool)
    if type(model).__name__ == "WordPiece":
        prefix = model.continuing_subword_prefix
        for token, i in vocab.items():
            table[i] = not token.startswith(prefix)
    else:
        for token, i in vocab.items():
            table[i] = token.startswith(("▁", "Ġ"))
    table[special_ids] = False
    return table
