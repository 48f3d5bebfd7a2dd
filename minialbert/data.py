"""Shard reader for distillation: mixture of packed folders, global shuffle, rank split, exact resume, MLM masks.

    stream = ShardStream([("shards/wiki", 0.7), ("shards/pubmed", 0.3)], seq_len=256, micro_batch_size=32,
                         rank=rank, world_size=world_size, seed=0, expected_fingerprint=tokenizer_fingerprint(teacher))
    for batch in stream:            # dicts of int64 tensors (B, L): input_ids attention_mask token_type_ids labels
        ...
        state = stream.state_dict()  # small; save with the checkpoint, stream.load_state_dict(state) to resume

The stream. All sources' rows form one global sequence of samples, epoch after epoch. Epoch e has
E = (rows of all sources) samples; source s gets a quota n_s proportional to its weight (largest remainder).
Position k of epoch e maps through a permutation of range(E) keyed by (seed, e) to a slot; slots are
grouped by source, so the sources are interleaved uniformly at random with exact quotas. The j-th slot of
source s in epoch e is its sample number e * n_s + j, which walks a permutation of the source's rows keyed by
(seed, s, pass): epoch e uses sample numbers [e * n_s, (e + 1) * n_s), so a down-weighted source continues
where the previous epoch stopped and shows every row before repeating one. Permutations are Feistel networks
over the index (O(1) memory, any size).

Ranks. Each micro-step consumes the next world_size * micro_batch_size samples of the global sequence; rank r
takes the r-th block of micro_batch_size. The state is the global sample count, so a run restored with another
world size continues with the next unconsumed sample: nothing repeats or is skipped.

Masks are drawn from an RNG keyed by (seed, epoch, position in epoch), so a resumed run sees the same masks.

Checks. Building a stream verifies every shard of its split against manifest.json (present, size, sha256,
readable Arrow, rows, row length vs seq_len; see verify_shard): a bad shard is one DataError naming the file
before the first batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

# Shared with data_prep: both sides hash a tokenizer folder, and a shard, the same way.
from data_prep.files import sha256_file
from data_prep.fingerprint import tokenizer_fingerprint
from data_prep.units import mix64  # the same hash keys data prep's document sampling

IGNORE_INDEX = -100


class DataError(ValueError):
    """Packed shards that cannot be read as expected; the message names the file or folder."""


# ----------------------------------------------------------------------------- permutations


def permute(index: np.ndarray, n: int, key: int) -> np.ndarray:
    """Image of `index` (int64 array, values < n) under a pseudo-random permutation of range(n) keyed by key.

    A 4-round Feistel network on the smallest even-bit domain >= n, cycle-walking back into range(n).
    """
    if n <= 1:
        return np.zeros_like(index)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    round_keys = [np.uint64(mix64(key, r)) for r in range(4)]
    x = index.astype(np.uint64)

    def feistel(v: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(half), v & mask
        for k in round_keys:
            f = (right ^ k) * np.uint64(0xBF58476D1CE4E5B9)
            f ^= f >> np.uint64(31)
            f *= np.uint64(0x94D049BB133111EB)
            f ^= f >> np.uint64(29)
            left, right = right, left ^ (f & mask)
        return (left << np.uint64(half)) | right

    with np.errstate(over="ignore"):
        x = feistel(x)
        out = x >= np.uint64(n)
        while out.any():
            x[out] = feistel(x[out])
            out = x >= np.uint64(n)
    return x.astype(np.int64)


# ----------------------------------------------------------------------------- shard folders


def verify_shard(path: str, shard: dict, seq_len: int) -> tuple[np.ndarray, list]:
    """Check one shard against its manifest.json entry and map it: (first rows (n_batches,), [(first row,
    offsets, ids, word_start bits, bit offset)]), zero-copy over the memory map.

    Checked, each a DataError naming the file: present; its size (manifests written since sizes are recorded);
    its sha256 (a full read: ~1 GB/s per rank, see docs/data.md); a readable Arrow file of the packed schema;
    its row count; no row longer than the manifest's seq_len.
    """
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DataError(f"{path}: shard listed in manifest.json is missing") from None
    if "bytes" in shard and size != shard["bytes"]:
        raise DataError(f"{path}: {size} bytes but manifest.json says {shard['bytes']}; the shard is truncated "
                         f"or was replaced")
    try:
        digest = sha256_file(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read the shard ({e.strerror or e})") from None
    if digest != shard["sha256"]:
        raise DataError(f"{path}: sha256 {digest[:12]} does not match manifest.json ({shard['sha256'][:12]}); "
                         f"the shard is corrupt or was replaced")
    try:
        reader = pa.ipc.open_file(pa.memory_map(path))
        batches, first, longest = [], 0, 0
        for i in range(reader.num_record_batches):
            b = reader.get_batch(i)
            ids, starts = b.column("input_ids"), b.column("word_start")
            offsets = ids.offsets.to_numpy()  # (rows + 1,)
            bits = starts.values
            batches.append((first, offsets, ids.values.to_numpy(), np.frombuffer(bits.buffers()[1], np.uint8),
                            bits.offset))
            longest = max(longest, int(np.diff(offsets).max(initial=0)))
            first += b.num_rows
    except (pa.ArrowException, OSError, KeyError, AttributeError, TypeError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable packed Arrow shard ({reason})") from None
    if first != shard["rows"]:
        raise DataError(f"{path}: {first} rows but manifest.json says {shard['rows']}")
    if longest > seq_len:
        raise DataError(f"{path}: rows of up to {longest} tokens but manifest.json says seq_len {seq_len}; "
                         f"the manifest does not belong to these shards")
    return np.array([b[0] for b in batches], np.int64), batches


class ShardFolder:
    """One packed folder's split, verified when opened (see `verify_shard`); row access by global row number."""

    def __init__(self, folder: str, split: str, expected_fingerprint: str | None = None,
                 expected_name: str = "the teacher's"):
        manifest_path = os.path.join(folder, "manifest.json")
        if not os.path.isdir(folder):
            raise DataError(f"{folder}: no such shard folder")
        if not os.path.isfile(manifest_path):
            raise DataError(f"{manifest_path}: missing; finish packing (python -m data_prep.merge_manifests {folder})")
        try:
            with open(manifest_path) as f:
                self.manifest = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{manifest_path}: not valid JSON ({e}); re-run python -m data_prep.merge_manifests "
                            f"{folder}") from None
        self.folder, self.split = folder, split
        tok = self.manifest["tokenizer"]
        if expected_fingerprint is not None and tok["fingerprint"] != expected_fingerprint:
            raise DataError(f"{manifest_path}: packed with tokenizer '{tok['name']}' ({tok.get('class', '?')}, "
                             f"fingerprint {tok['fingerprint'][:12]}), not with {expected_name} "
                             f"({expected_fingerprint[:12]}); re-pack with the teacher's tokenizer")
        if split not in self.manifest["splits"]:
            raise DataError(f"{manifest_path}: no split '{split}' (has: {', '.join(self.manifest['splits'])})")
        self.shards = self.manifest["splits"][split]
        self.starts = np.cumsum([0] + [s["rows"] for s in self.shards])  # (n_shards + 1,) first row of each
        self.rows = int(self.starts[-1])
        self.seq_len = int(self.manifest["seq_len"])
        self.max_id = max((s["max_id"] for s in self.shards), default=0)
        # Every shard is verified and memory-mapped now, so that a bad one stops the run before it starts.
        self._open = [verify_shard(os.path.join(folder, s["file"]), s, self.seq_len) for s in self.shards]

    def row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,), word_start (n,) bool) of row `index` of this split."""
        shard_number = int(np.searchsorted(self.starts, index, side="right")) - 1
        firsts, batches = self._open[shard_number]
        local = index - int(self.starts[shard_number])
        first, offsets, ids, bits, bit_offset = batches[int(np.searchsorted(firsts, local, side="right")) - 1]
        lo, hi = int(offsets[local - first]), int(offsets[local - first + 1])
        a, z = bit_offset + lo, bit_offset + hi
        word_start = np.unpackbits(bits[a // 8:(z + 7) // 8], bitorder="little")[a % 8:a % 8 + hi - lo].astype(bool)
        return ids[lo:hi], word_start


# ----------------------------------------------------------------------------- masking and batches


class MlmMasker:
    """BERT masking: choose mlm_probability of the non-special tokens (or of the words), 80% [MASK], 10% random,
    10% unchanged; at least one token per row when the row has any maskable token."""

    def __init__(self, special_ids: dict, vocab_size: int, mlm_probability: float, whole_word_mask: bool,
                 all_special_ids: list[int]):
        for key in ("pad", "mask"):
            if special_ids.get(key) is None:
                raise ValueError(f"special_ids: '{key}' id is required (got {special_ids})")
        self.pad, self.mask_id = special_ids["pad"], special_ids["mask"]
        self.vocab_size, self.p, self.whole_word = vocab_size, mlm_probability, whole_word_mask
        self.never = np.zeros(vocab_size, dtype=bool)  # (V,) tokens never masked
        self.never[[i for i in list(special_ids.values()) + list(all_special_ids) if i is not None]] = True

    def __call__(self, ids: np.ndarray, word_start: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input ids with masks applied (n,), labels (n,)) for one unpadded row."""
        ids = ids.astype(np.int64)  # shards hold uint16/uint32
        candidate = ~self.never[ids]
        if self.whole_word:
            word = np.cumsum(word_start & candidate)  # (n,) word number per token; 0 = a leading word fragment
            chosen_word = rng.random(int(word[-1]) + 1 if len(word) else 1) < self.p
            chosen = candidate & chosen_word[word]
        else:
            chosen = candidate & (rng.random(len(ids)) < self.p)
        if not chosen.any() and candidate.any():
            pick = rng.choice(np.flatnonzero(candidate))
            chosen = candidate & (word == word[pick]) if self.whole_word else np.arange(len(ids)) == pick
        labels = np.where(chosen, ids, IGNORE_INDEX)
        out = ids.copy()
        action = rng.random(len(ids))
        out[chosen & (action < 0.8)] = self.mask_id
        swap = chosen & (action >= 0.8) & (action < 0.9)
        out[swap] = rng.integers(0, self.vocab_size, int(swap.sum()))
        return out, labels


def _collate(rows: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad: int) -> dict[str, torch.Tensor]:
    """Pad (ids, labels) rows to seq_len → dict of (B, seq_len) int64 tensors."""
    ids = np.full((len(rows), seq_len), pad, np.int64)
    labels = np.full((len(rows), seq_len), IGNORE_INDEX, np.int64)
    attention = np.zeros((len(rows), seq_len), np.int64)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, :len(row_ids)] = row_ids
        labels[i, :len(row_labels)] = row_labels
        attention[i, :len(row_ids)] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
            "token_type_ids": torch.zeros_like(torch.from_numpy(ids)), "labels": torch.from_numpy(labels)}


def _open_sources(folders: list[str], split: str, expected_fingerprint: str | None, seq_len: int | None,
                  special_ids: dict | None, vocab_size: int | None, expected_name: str = "the teacher's"):
    """Open folders and check they agree with each other and with the model's tokenizer facts."""
    opened = [ShardFolder(f, split, expected_fingerprint, expected_name) for f in folders]
    fingerprints = {o.manifest["tokenizer"]["fingerprint"] for o in opened}
    if len(fingerprints) > 1:
        raise DataError(f"{', '.join(folders)}: packed with different tokenizers; mix only folders of one tokenizer")
    tok = opened[0].manifest["tokenizer"]
    special_ids = dict(special_ids) if special_ids is not None else dict(tok["special_ids"])
    vocab_size = vocab_size if vocab_size is not None else tok["vocab_size"]
    for o in opened:
        if o.max_id >= vocab_size:
            raise DataError(f"{o.folder}/manifest.json: ids up to {o.max_id} do not fit vocab_size {vocab_size}")
    longest = max(o.seq_len for o in opened)
    seq_len = seq_len if seq_len is not None else longest
    if longest > seq_len:
        raise DataError(f"{opened[[o.seq_len for o in opened].index(longest)].folder}: rows of {longest} tokens "
                         f"do not fit seq_len {seq_len}")
    return opened, seq_len, special_ids, vocab_size, tok["all_special_ids"]


class ShardStream:
    """Endless, resumable, rank-sharded MLM batches from a weighted mixture of packed folders (see module doc)."""

    def __init__(self, sources: list[tuple[str, float]], split: str = "train", seq_len: int | None = None,
                 micro_batch_size: int = 32, rank: int = 0, world_size: int = 1, seed: int = 0,
                 mlm_probability: float = 0.15, whole_word_mask: bool = False, special_ids: dict | None = None,
                 vocab_size: int | None = None, expected_fingerprint: str | None = None,
                 expected_tokenizer: str = "the teacher's"):
        if not sources:
            raise ValueError("sources: at least one (folder, weight) is required")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        weights = np.array([float(w) for _, w in sources])
        if (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(f"sources: weights must be >= 0 with a positive sum (got {weights.tolist()})")
        self.folders, self.seq_len, special_ids, vocab_size, all_special = _open_sources(
            [f for f, _ in sources], split, expected_fingerprint, seq_len, special_ids, vocab_size,
            expected_tokenizer)
        for folder, w in zip(self.folders, weights):
            if folder.rows == 0 and w > 0:
                raise DataError(f"{folder.folder}: split '{split}' has no rows")
        self.masker = MlmMasker(special_ids, vocab_size, mlm_probability, whole_word_mask, all_special)
        self.pad = special_ids["pad"]
        self.micro_batch_size, self.rank, self.world_size, self.seed = micro_batch_size, rank, world_size, seed
        self.source_rows = np.array([f.rows for f in self.folders], np.int64)  # (S,) N_s
        self.samples_per_epoch = int(self.source_rows.sum())  # E
        self.quota = _largest_remainder(weights / weights.sum() * self.samples_per_epoch)  # (S,) n_s, sums to E
        self.quota_starts = np.concatenate([[0], np.cumsum(self.quota)])  # (S + 1,)
        self.samples_consumed = 0  # global position in the stream, over all ranks

    @property
    def epoch(self) -> int:
        return self.samples_consumed // self.samples_per_epoch

    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "epoch": self.epoch, "seed": self.seed,
                "samples_per_epoch": self.samples_per_epoch, "quota": self.quota.tolist()}

    def check_state(self, state: dict) -> None:
        """DataError listing every field in which a saved state (e.g. a checkpoint's) disagrees with this stream;
        changes nothing, so a run can check before it builds anything else."""
        mine = self.state_dict()
        differ = [f"{key} {state.get(key)} (saved) != {mine[key]} (now)"
                  for key in ("seed", "samples_per_epoch", "quota") if state.get(key) != mine[key]]
        if differ:
            raise DataError(f"stream state: {'; '.join(differ)}: it was saved from other data (folders, their rows "
                             f"or mixture weights) or another seed; resume with the same data or start a new run")

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.samples_consumed = int(state["samples_consumed"])

    def sample_ids(self, positions: np.ndarray) -> list[tuple[int, int]]:
        """(source number, row in that source's split) for global stream positions (int64 array)."""
        E = self.samples_per_epoch
        epoch, k = positions // E, positions % E
        out = [None] * len(positions)
        for e in np.unique(epoch):
            sel = np.flatnonzero(epoch == e)
            slot = permute(k[sel], E, mix64(self.seed, int(e), 0x6D6978))  # position → slot in the epoch
            source = np.searchsorted(self.quota_starts, slot, side="right") - 1
            for s in np.unique(source):
                these = sel[source == s]
                nth = int(e) * int(self.quota[s]) + slot[source == s] - self.quota_starts[s]  # source sample number
                n = int(self.source_rows[s])
                rows = np.empty(len(nth), np.int64)
                for p in np.unique(nth // n):  # source pass
                    in_pass = nth // n == p
                    rows[in_pass] = permute(nth[in_pass] % n, n, mix64(self.seed, int(s), int(p), 0x737263))
                for i, r in zip(these, rows):
                    out[i] = (int(s), int(r))
        return out

    def batch_at(self, start: int, size: int) -> dict[str, torch.Tensor]:
        """The batch made of global positions start .. start + size - 1 (masks keyed by position)."""
        positions = np.arange(start, start + size, dtype=np.int64)
        rows = []
        for g, (s, r) in zip(positions, self.sample_ids(positions)):
            ids, word_start = self.folders[s].row(r)
            e, k = divmod(int(g), self.samples_per_epoch)
            rng = np.random.default_rng([self.seed, e, k, 0x6D6C6D])
            rows.append(self.masker(ids, word_start, rng))
        return _collate(rows, self.seq_len, self.pad)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            step_start = self.samples_consumed
            batch = self.batch_at(step_start + self.rank * self.micro_batch_size, self.micro_batch_size)
            self.samples_consumed = step_start + self.world_size * self.micro_batch_size
            yield batch


def _largest_remainder(shares: np.ndarray) -> np.ndarray:
    """Integers summing to round(sum(shares)), each floor(share) or floor(share) + 1."""
    base = np.floor(shares).astype(np.int64)
    short = int(round(shares.sum())) - int(base.sum())
    base[np.argsort(-(shares - base), kind="stable")[:short]] += 1
    return base


def iterate_split(folder: str, split: str = "validation", batch_size: int = 32, seq_len: int | None = None,
                  rank: int = 0, world_size: int = 1, seed: int = 0, mlm_probability: float = 0.15,
                  whole_word_mask: bool = False, special_ids: dict | None = None, vocab_size: int | None = None,
                  expected_fingerprint: str | None = None, max_batches: int | None = None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Held-out rows in file order (rank r reads the r-th contiguous share), fixed masks keyed by (seed, row):
    every evaluation of the same folder sees exactly the same batches. The last batch may be smaller."""
    (source,), seq_len, special_ids, vocab_size, all_special = _open_sources(
        [folder], split, expected_fingerprint, seq_len, special_ids, vocab_size)
    masker = MlmMasker(special_ids, vocab_size, mlm_probability, whole_word_mask, all_special)
    lo, hi = source.rows * rank // world_size, source.rows * (rank + 1) // world_size
    for n, start in enumerate(range(lo, hi, batch_size)):
        if max_batches is not None and n >= max_batches:
            return
        rows = []
        for r in range(start, min(start + batch_size, hi)):
            ids, word_start = source.row(r)
            rows.append(masker(ids, word_start, np.random.default_rng([seed, r, 0x6576616C])))
        yield _collate(rows, seq_len, special_ids["pad"])


def token_counts(folders: list[str], vocab_size: int, split: str = "train") -> np.ndarray:
    """(vocab_size,) how often each token id occurs in the ``split`` rows of the shard folders."""
    counts = np.zeros(vocab_size, np.int64)
    for folder in folders:
        for _, batches in ShardFolder(folder, split)._open:
            for _, _, ids, _, _ in batches:
                counts += np.bincount(np.asarray(ids, np.int64), minlength=vocab_size)[:vocab_size]
    return counts
