"""Tiny tokenizers, models and learnable toy datasets for the fine-tuning tests (written to temp folders).

Pair task (GLUE RTE columns): label 0 ("entailment") when both sentences name the same animal, else 1.
NER task (BioBERT TSV): diseases ("florbitis", "acute gromosis") and chemicals ("zanthol") among filler words;
the entity words are out of the vocabulary as wholes and split into two word pieces ("flor", "##bitis").
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from tiny_models import tiny_config
from minialbert import MiniAlbertForMaskedLM

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow"]
VERBS = ["runs", "sleeps", "eats", "jumps"]
FILLERS = ["the", "a", "quickly", "slowly", "today", "here"]
CONTEXT = ["patients", "with", "treated", "by", "showed", "no", "signs", "of", "and", "were", "given", "severe"]
DISEASE_HEADS, DISEASE_TAILS = ["flor", "grom", "vex"], ["##bitis", "##osis", "##itis"]
CHEM_HEADS, CHEM_TAILS = ["zan", "kor"], ["##thol", "##amide"]
VOCAB = SPECIALS + ANIMALS + VERBS + FILLERS + CONTEXT + DISEASE_HEADS + DISEASE_TAILS + CHEM_HEADS + CHEM_TAILS + ["acute"]


def write_tokenizer(directory: Path) -> Path:
    """A BERT WordPiece tokenizer (tokenizers-backed) over ``VOCAB``: lower-cased, [CLS] a [SEP] b [SEP]."""
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=64)
    tokenizer.save_pretrained(str(directory))
    return directory


def write_student(directory: Path, seed: int = 0, **overrides) -> Path:
    """A tiny MiniALBERT export (masked-LM weights) with the toy tokenizer beside it.

    Tests pass ``initializer_range=0.2``: with the default 0.02 a random tiny model's attention is nearly
    uniform and a frozen one gives adapters nothing to work with; a distilled student is not like that.
    """
    import torch

    torch.manual_seed(seed)
    MiniAlbertForMaskedLM(tiny_config(**overrides)).save_pretrained(str(directory))
    return write_tokenizer(directory)


def write_bert(directory: Path, seed: int = 0, initializer_range: float = 0.2) -> Path:
    """A tiny plain BertForSequenceClassification baseline (hidden 32, 2 layers) with the toy tokenizer."""
    import torch

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, initializer_range=initializer_range)
    BertForSequenceClassification(config).save_pretrained(str(directory))
    return write_tokenizer(directory)


def pair_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = rng.choice(ANIMALS)
        same = rng.random() < 0.5
        b = a if same else rng.choice([x for x in ANIMALS if x != a])
        s1 = f"the {a} {rng.choice(VERBS)} {rng.choice(FILLERS)}"
        s2 = f"{rng.choice(['a', 'the'])} {b} {rng.choice(VERBS)}"
        rows.append({"sentence1": s1, "sentence2": s2, "label": 0 if same else 1})
    return rows


def write_pair_task(directory: Path, n_train: int = 400, n_val: int = 120, label_names: bool = False) -> Path:
    """``train.tsv`` / ``validation.tsv`` with RTE columns; labels as ints or as GLUE names."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("validation", n_val, 2)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i, r in enumerate(pair_rows(n, seed)):
            label = ["entailment", "not_entailment"][r["label"]] if label_names else str(r["label"])
            lines.append(f"{i}\t{r['sentence1']}\t{r['sentence2']}\t{label}")
        (directory / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return directory


def ner_sentence(rng: random.Random, min_words: int = 4, max_words: int = 9) -> list[tuple[str, str]]:
    """Filler words with one or two entities: ``[(word, label), ...]``."""
    words = [(rng.choice(CONTEXT), "O") for _ in range(rng.randint(min_words, max_words))]
    for _ in range(rng.randint(1, 2)):
        at = rng.randint(0, len(words))
        kind = rng.random()
        if kind < 0.4:
            entity = [(rng.choice(DISEASE_HEADS) + rng.choice(DISEASE_TAILS)[2:], "B-Disease")]
        elif kind < 0.6:
            entity = [("acute", "B-Disease"), (rng.choice(DISEASE_HEADS) + rng.choice(DISEASE_TAILS)[2:], "I-Disease")]
        else:
            entity = [(rng.choice(CHEM_HEADS) + rng.choice(CHEM_TAILS)[2:], "B-Chemical")]
        words[at:at] = entity
    return words


def write_ner_task(directory: Path, n_train: int = 300, n_eval: int = 80, long_every: int = 0) -> Path:
    """``train.tsv`` / ``devel.tsv`` / ``test.tsv``; every ``long_every``-th sentence is ~40 words long."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("devel", n_eval, 2), ("test", n_eval, 3)):
        rng = random.Random(seed)
        blocks = []
        for i in range(n):
            long = long_every and i % long_every == 0
            sent = ner_sentence(rng, 30, 40) if long else ner_sentence(rng)
            blocks.append("\n".join(f"{w}\t{t}" for w, t in sent))
        (directory / f"{split}.tsv").write_text("\n\n".join(blocks) + "\n")
    return directory
