"""``--augment K``: K new copies of each training sentence, TinyBERT-style word replacement, from offline sources.

Each word of a sentence is replaced with probability 0.4 by one of its candidates, drawn uniformly:
- **mlm**: for a word that is a single word piece, the general teacher's top-15 masked-LM predictions at its
  place (TinyBERT's source); used where that teacher has an MLM head (all-MiniLM-L6-v2 has none);
- **wordnet**: its WordNet synonyms (single words, any sense; Debian's ``wordnet-base``, installed when
  missing); for every other word, and for every word when the teacher has no MLM head.
Function words (a closed list) and words with neither kind of candidate are kept. A copy equal to its original
is drawn again (up to 10 tries, then dropped). The copies carry **no gold label**: the fine-tuned teacher labels
them (``task_teacher``). NER copies keep every word of an entity (a gold label other than ``O``) as it is and
replace context words only; the teacher then labels every word of the copy, entity words included.

Deterministic for ``seed`` (each sentence draws from its own generator, seeded by ``seed`` and its index, so
a copy does not depend on the others); the copies are cached as JSON (``cached``) so a sweep draws them once.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path

from . import InputError

REPLACE_PROBABILITY = 0.4  # TinyBERT's p_t
MLM_CANDIDATES = 15  # TinyBERT's K
TRIES = 10
FUNCTION_WORDS = frozenset(
    "a an the and or but nor so yet if then than that this these those there here of in on at by for with from "
    "to into onto upon over under about as is are was were be been being am do does did done have has had not no "
    "it its he she they them we us you i me my your our their his her who whom whose which what when where why "
    "how all any each every some such can could will would shall should may might must".split())
_WORD = re.compile(r"^[a-z][a-z'-]*$")


@lru_cache(maxsize=2)
def wordnet_synonyms(wordnet_dir: str) -> dict[str, tuple[str, ...]]:
    """Lower-cased word -> its single-word WordNet synonyms over every sense, sorted (deterministic)."""
    from data_prep.wordnet import ensure_wordnet, read_synsets

    try:
        ensure_wordnet(wordnet_dir)
        table: dict[str, set[str]] = {}
        for _lexfile, words, _definition, _examples in read_synsets(wordnet_dir):
            single = {re.sub(r"\(.*\)$", "", w).lower() for w in words if " " not in w}
            single = {w for w in single if _WORD.match(w)}
            for w in single:
                table.setdefault(w, set()).update(single - {w})
    except (FileNotFoundError, OSError) as e:
        raise InputError(f"--augment: WordNet unavailable ({str(e).splitlines()[0]})") from None
    return {w: tuple(sorted(s)) for w, s in table.items() if s}


class MlmCandidates:
    """The general teacher's top predictions for a single-piece word, masked in its sentence."""

    def __init__(self, model_dir: str, batch_size: int = 64):
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
        self.batch_size = batch_size

    def __call__(self, words: list[str]) -> list[tuple[str, ...]]:
        """Per word: candidate words (empty where the word is not one piece)."""
        tok, torch = self.tokenizer, self.torch
        pieces = [tok.tokenize(w) for w in words]
        places = [i for i, p in enumerate(pieces) if len(p) == 1 and _WORD.match(words[i].lower())]
        out: list[tuple[str, ...]] = [() for _ in words]
        ids = [tok.convert_tokens_to_ids(p) for p in pieces]
        for start in range(0, len(places), self.batch_size):
            chunk = places[start:start + self.batch_size]
            rows, where = [], []
            for i in chunk:
                row, at = [tok.cls_token_id], 0
                for j, piece_ids in enumerate(ids):
                    if j == i:
                        at = len(row)
                        row.append(tok.mask_token_id)
                    else:
                        row.extend(piece_ids)
                rows.append(row[: 510] + [tok.sep_token_id])
                where.append(min(at, 510))
            width = max(len(r) for r in rows)
            batch = torch.full((len(rows), width), tok.pad_token_id or 0)
            mask = torch.zeros_like(batch)
            for r, row in enumerate(rows):
                batch[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=batch, attention_mask=mask).logits  # (n, L, V)
            top = logits[torch.arange(len(rows)), torch.tensor(where)].topk(MLM_CANDIDATES + 1).indices
            for i, cand in zip(chunk, top.tolist()):
                found = [t for t in tok.convert_ids_to_tokens(cand) if _WORD.match(t) and t != words[i].lower()]
                out[i] = tuple(found[:MLM_CANDIDATES])
        return out


def has_mlm_head(model_dir: str) -> bool:
    """Whether the folder's checkpoint holds its family's masked-LM head (read from its keys, as for a teacher)."""
    from transformers import AutoConfig

    from ..teacher import has_mlm_head as holds_head
    from ..teacher_families import family_of

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError):
        return False
    return holds_head(Path(model_dir), config, family_of(config))


def _cased(candidate: str, word: str) -> str:
    """The candidate written as the word is: Capitalised, UPPER or lower."""
    if word.isupper() and len(word) > 1:
        return candidate.upper()
    return candidate.capitalize() if word[:1].isupper() else candidate


class Augmenter:
    """``copies(words, keep, k, seed, index)``: k new word lists for one sentence."""

    def __init__(self, source: str, wordnet_dir: str, mlm_model: str | None):
        self.synonyms = wordnet_synonyms(wordnet_dir)
        self.mlm = MlmCandidates(mlm_model) if source == "mlm+wordnet" and mlm_model else None
        self.source = source if self.mlm else "wordnet"

    def copies(self, words: list[str], keep: list[bool], k: int, seed: int, index: int) -> list[list[str]]:
        rng = random.Random(f"{seed}:{index}")
        mlm = self.mlm(words) if self.mlm else [()] * len(words)
        candidates = []
        for w, kept, from_mlm in zip(words, keep, mlm):
            low = w.lower()
            if kept or low in FUNCTION_WORDS:
                candidates.append(())
            else:
                candidates.append(from_mlm or self.synonyms.get(low, ()))
        out = []
        if not any(candidates):
            return out
        for _ in range(k):
            for _try in range(TRIES):
                new = [_cased(rng.choice(c), w) if c and rng.random() < REPLACE_PROBABILITY else w
                       for w, c in zip(words, candidates)]
                if new != words:
                    out.append(new)
                    break
        return out


def cached(cache_dir: Path, what: dict, make) -> list:
    """``make()``'s JSON-able result, stored under ``cache_dir`` by a hash of ``what`` (the inputs)."""
    from data_prep.files import write_json_atomic

    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"augment-{key}.json"
    if path.is_file():
        return json.loads(path.read_text())["copies"]
    result = json.loads(json.dumps(make()))  # the same types (lists) whether made now or read back
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"settings": {k: v for k, v in what.items() if k != "inputs"}, "copies": result})
    return result


def augment(rows: list[list[list[str]]], keeps: list[list[list[bool]]] | None, k: int, seed: int,
            augmenter: Augmenter) -> list[tuple[int, list[list[str]]]]:
    """``(original row, new segments)`` for every copy: a row is one or two word lists (a sentence pair, each
    sentence varied on its own draw); ``keeps`` marks the words never replaced (NER entities)."""
    out = []
    for i, segments in enumerate(rows):
        drawn = []
        for j, words in enumerate(segments):
            keep = keeps[i][j] if keeps else [False] * len(words)
            drawn.append(augmenter.copies(words, keep, k, seed, len(segments) * i + j))
        for c in range(max(map(len, drawn))):
            out.append((i, [d[c] if c < len(d) else words for d, words in zip(drawn, segments)]))
    return out


def make_augmenter(source: str, wordnet_dir: str, general_model: str | None) -> Augmenter:
    """``auto``: the general teacher's MLM head (single-piece words) and WordNet where it has a head, else
    WordNet; ``wordnet``: WordNet only."""
    use_mlm = source == "auto" and general_model and Path(general_model).is_dir() and has_mlm_head(general_model)
    return Augmenter("mlm+wordnet" if use_mlm else "wordnet", wordnet_dir, general_model if use_mlm else None)
