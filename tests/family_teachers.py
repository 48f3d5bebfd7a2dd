"""Tiny random teachers of every family, each saved with ``save_pretrained`` beside a real tokenizer of its kind:
WordPiece (BERT, ELECTRA), byte-level BPE trained here (RoBERTa, ModernBERT) and SentencePiece unigram models
trained here on WordNet's glosses (XLM-R, DeBERTa-v3) — real English text, offline; ``pack_in_process`` packs shards
for them with the packer's own ``main``."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from data_prep_helpers import WORDS, build_wordpiece_tokenizer, make_texts

FAMILIES = ("bert", "roberta", "xlm-roberta", "electra", "deberta-v2", "modernbert")
HIDDEN, LAYERS, HEADS, POSITIONS = 32, 4, 4, 64
WINDOW = 4  # ModernBERT's local layers see |i - j| <= 4: inside the tests' 24-32 token rows


def corpus_text(n: int = 3000) -> list[str]:
    """WordNet glosses and examples (the demo's corpus), else the house word list (a machine without WordNet)."""
    from data_prep.wordnet import DEFAULT_WORDNET, read_synsets

    if os.path.isdir(DEFAULT_WORDNET):
        return [f"{d}. {' '.join(ex)}" for _, _, d, ex in itertools.islice(read_synsets(), n)]
    return [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))]


def build_sentencepiece(out: Path, tokenizer_class: str, vocab_size: int = 300) -> Path:
    """A unigram SentencePiece model trained on real text, loaded and saved by ``tokenizer_class``."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    raw = Path(f"{out}_raw")
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "corpus.txt").write_text("\n".join(corpus_text()))
    name = {"XLMRobertaTokenizer": "sentencepiece.bpe", "DebertaV2Tokenizer": "spm"}[tokenizer_class]
    spm.SentencePieceTrainer.train(input=str(raw / "corpus.txt"), model_prefix=str(raw / name), vocab_size=vocab_size,
                                   model_type="unigram", pad_id=-1, unk_id=0, bos_id=-1, eos_id=-1, minloglevel=2,
                                   hard_vocab_limit=False,  # the house word list (no WordNet) has fewer pieces
                                   num_threads=1)
    (raw / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": tokenizer_class}))
    AutoTokenizer.from_pretrained(raw).save_pretrained(out)
    return out


def build_byte_bpe(out: Path, style: str, vocab_size: int = 400) -> Path:
    """A byte-level BPE trained on real text: RoBERTa's specials (<s> </s> <pad> <mask>) or ModernBERT's
    ([CLS] [SEP] [PAD] [MASK])."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = (["<s>", "<pad>", "</s>", "<unk>", "<mask>"] if style == "roberta"
                else ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"])
    tok = Tokenizer(models.BPE(unk_token=specials[3] if style == "roberta" else "[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus_text(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if style == "roberta":  # RoBERTa's own class from the trained vocabulary and merges
        from transformers import RobertaTokenizer

        model = json.loads(tok.to_str())["model"]
        merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model["merges"]]
        wrapped = RobertaTokenizer(vocab=model["vocab"], merges=merges)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
        wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                          unk_token="[UNK]", pad_token="[PAD]", mask_token="[MASK]")
    wrapped.save_pretrained(out)
    return out


def build_tokenizer(family: str, out: Path) -> Path:
    if family in ("bert", "electra"):
        return Path(build_wordpiece_tokenizer(str(out)))
    if family == "roberta":
        return build_byte_bpe(out, "roberta")
    if family == "modernbert":
        return build_byte_bpe(out, "modernbert")
    return build_sentencepiece(out, {"xlm-roberta": "XLMRobertaTokenizer", "deberta-v2": "DebertaV2Tokenizer"}[family])


def teacher_model(family: str, tokenizer, mlm_head: bool = True, seed: int = 0, hidden: int = HIDDEN):
    """A random-weight model of ``family`` sized for ``tokenizer`` (ELECTRA: a discriminator, no MLM head)."""
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                  intermediate_size=2 * hidden, pad_token_id=tokenizer.pad_token_id)
    drop = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        config, cls = tf.BertConfig(**common, **drop, max_position_embeddings=POSITIONS), "Bert"
    elif family in ("roberta", "xlm-roberta"):
        cfg = tf.RobertaConfig if family == "roberta" else tf.XLMRobertaConfig
        config = cfg(**common, **drop, max_position_embeddings=POSITIONS + tokenizer.pad_token_id + 1, type_vocab_size=1,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id)
        cls = "Roberta" if family == "roberta" else "XLMRoberta"
    elif family == "electra":
        config = tf.ElectraConfig(**common, **drop, embedding_size=16, max_position_embeddings=POSITIONS)
        return tf.ElectraForPreTraining(config)
    elif family == "deberta-v2":  # v3's settings: relative positions only, shared keys, log buckets, no token types
        config = tf.DebertaV2Config(**common, **drop, max_position_embeddings=POSITIONS, relative_attention=True,
                                    pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=-1,
                                    norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
                                    type_vocab_size=0)
        cls = "DebertaV2"
    else:
        config = tf.ModernBertConfig(**common, max_position_embeddings=POSITIONS, global_attn_every_n_layers=3,
                                     local_attention=2 * WINDOW, cls_token_id=tokenizer.cls_token_id,
                                     sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                                     eos_token_id=tokenizer.sep_token_id)
        cls = "ModernBert"
    return getattr(tf, f"{cls}ForMaskedLM" if mlm_head else f"{cls}Model")(config)


def build_family_teacher(family: str, out: Path, mlm_head: bool = True, seed: int = 0, hidden: int = HIDDEN) -> Path:
    """Tokenizer and random model of ``family`` in one folder."""
    from transformers import AutoTokenizer

    build_tokenizer(family, out)
    teacher_model(family, AutoTokenizer.from_pretrained(out), mlm_head, seed, hidden).save_pretrained(out)
    return out


def pack_in_process(teacher, out):
    """data_prep.pack_corpus's own main, here: the CLI's work without a fresh interpreter per family."""
    from data_prep.pack_corpus import main

    corpus = out.parent / f"{out.name}_corpus.txt"
    corpus.write_text("\n\n".join(make_texts(120, seed=0, max_words=60)) + "\n")
    assert main(["--format", "text", "--input", str(corpus), "--tokenizer", str(teacher), "--out", str(out),
                 "--seq-len", "32", "--max-windows", "2", "--validation-fraction", "0.1", "--no-progress"]) == 0
    return out
