"""minialbert.data: fingerprints, global shuffle, rank split, exact resume (also 2 → 3 ranks), mixture, masks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch
from data_prep_helpers import build_sentencepiece_tokenizer, build_wordpiece_tokenizer, make_texts, write_jsonl
from transformers import AutoTokenizer

from data_prep.pack_corpus import main
from minialbert.data import IGNORE_INDEX, DataError, ShardStream, iterate_split, tokenizer_fingerprint


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """Two folders packed with one WordPiece tokenizer: 'general' (bigger) and 'bio' (smaller)."""
    root = tmp_path_factory.mktemp("packed")
    tokenizer = build_wordpiece_tokenizer(str(root / "wordpiece"))
    folders = {}
    for name, n_docs, seed in (("general", 40, 11), ("bio", 12, 12)):
        write_jsonl(root / f"{name}.jsonl", make_texts(n_docs, seed=seed, min_words=3, max_words=40))
        assert main(["--no-progress", "--format", "jsonl", "--input", str(root / f"{name}.jsonl"), "--tokenizer",
                     tokenizer, "--out", str(root / name), "--seq-len", "48", "--max-windows", "3",
                     "--validation-fraction", "0.2", "--shard-rows", "16"]) == 0
        folders[name] = str(root / name)
    return tokenizer, folders


def shard_rows(folder, split="train") -> list[tuple]:
    manifest = json.load(open(os.path.join(folder, "manifest.json")))
    rows = []
    for shard in manifest["splits"][split]:
        rows += [tuple(r) for r in pa.ipc.open_file(os.path.join(folder, shard["file"])).read_all()
                 .column("input_ids").to_pylist()]
    return rows


def originals(batch) -> list[tuple]:
    """The unmasked rows of a batch (labels hold the original ids where masked), padding removed."""
    ids = torch.where(batch["labels"] != IGNORE_INDEX, batch["labels"], batch["input_ids"])
    return [tuple(row[mask.bool()].tolist()) for row, mask in zip(ids, batch["attention_mask"])]


def take(stream, steps):
    it = iter(stream)
    return [next(it) for _ in range(steps)]


def test_fingerprint_identifies_the_tokenizer(packed, tmp_path):
    tokenizer, folders = packed
    fp = tokenizer_fingerprint(tokenizer)
    assert json.load(open(os.path.join(folders["general"], "manifest.json")))["tokenizer"]["fingerprint"] == fp
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp_path / "copy")
    (tmp_path / "copy" / "model.safetensors").write_bytes(b"weights do not count")
    assert tokenizer_fingerprint(str(tmp_path / "copy")) == fp
    other = build_sentencepiece_tokenizer(str(tmp_path / "sp"))
    assert tokenizer_fingerprint(other) != fp
    with pytest.raises(ValueError, match="no such tokenizer folder"):
        tokenizer_fingerprint(str(tmp_path / "missing"))


def test_batches_are_padded_mlm_batches(packed):
    tokenizer, folders = packed
    tok = AutoTokenizer.from_pretrained(tokenizer)
    batch = next(iter(ShardStream([(folders["general"], 1.0)], seq_len=64, micro_batch_size=8, seed=3)))
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert all(v.shape == (8, 64) and v.dtype == torch.int64 for v in batch.values())
    pad = batch["attention_mask"] == 0
    assert pad.any() and (batch["input_ids"][pad] == tok.pad_token_id).all() and (batch["labels"][pad] == -100).all()
    assert (batch["token_type_ids"] == 0).all() and (batch["input_ids"][:, 0] == tok.cls_token_id).all()
    assert ((batch["labels"] != -100).sum(1) >= 1).all()  # every row has something to predict


def test_an_epoch_visits_every_row_once_and_resharding_2_to_3_ranks_continues_exactly(packed):
    _, folders = packed
    source = [(folders["general"], 1.0)]
    rows = shard_rows(folders["general"])
    n = len(rows)

    def stream(rank, world, state=None):
        s = ShardStream(source, micro_batch_size=3, rank=rank, world_size=world, seed=5)
        if state is not None:
            s.load_state_dict(state)
        return s

    reference = [r for b in take(stream(0, 1), 2 * n // 3 + 4) for r in originals(b)]  # world 1, 3 per step
    assert Counter(reference[:n]) == Counter(rows)  # epoch 0: a permutation of the rows
    assert Counter(reference[n:2 * n]) == Counter(rows) and reference[:n] != reference[n:2 * n]  # reshuffled

    two = [stream(r, 2) for r in range(2)]
    seen = []
    for batches in zip(*(take(s, 5) for s in two)):  # 5 steps x 2 ranks x 3
        for b in batches:
            seen += originals(b)
    state = two[0].state_dict()
    assert state == two[1].state_dict() and state["samples_consumed"] == 30
    assert len(json.dumps(state)) < 200
    three = [stream(r, 3, state) for r in range(3)]
    steps = (n - 30) // 9 + 2  # past the end of epoch 0
    for batches in zip(*(take(s, steps) for s in three)):
        for b in batches:
            seen += originals(b)
    assert three[0].epoch == 1 and three[0].state_dict()["samples_consumed"] == 30 + 9 * steps
    assert seen == reference[:len(seen)]  # nothing repeated, nothing skipped, same order
    assert Counter(seen[:n]) == Counter(rows)


def test_resume_gives_identical_batches_and_masks(packed):
    _, folders = packed
    sources = [(folders["general"], 1.0), (folders["bio"], 1.0)]
    kwargs = dict(micro_batch_size=4, rank=1, world_size=2, seed=9, whole_word_mask=True)
    full = take(ShardStream(sources, **kwargs), 12)
    first = ShardStream(sources, **kwargs)
    take(first, 5)
    resumed = ShardStream(sources, **kwargs)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for a, b in zip(full[5:], take(resumed, 7)):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other_seed = take(ShardStream(sources, **{**kwargs, "seed": 10}), 1)[0]
    assert not torch.equal(other_seed["input_ids"], full[0]["input_ids"])
    fewer = ShardStream([(folders["general"], 1.0)], **kwargs)
    n = fewer.samples_per_epoch
    expected = (rf"stream state: samples_per_epoch {first.samples_per_epoch} \(saved\) != {n} \(now\); "
                rf"quota \[.*\] \(saved\) != \[{n}\] \(now\): it was saved from other data")
    with pytest.raises(DataError, match=expected):
        fewer.load_state_dict(first.state_dict())
    assert fewer.samples_consumed == 0


def test_mixture_weights_set_each_sources_share(packed):
    _, folders = packed
    rows = [shard_rows(folders["general"]), shard_rows(folders["bio"])]
    general, bio = rows
    for weights in ((3.0, 1.0), (9.0, 1.0)):  # bio up-weighted (natural share ~1/5), then down-weighted
        stream = ShardStream([(folders["general"], weights[0]), (folders["bio"], weights[1])], micro_batch_size=1,
                             seed=1)
        epoch = stream.samples_per_epoch
        assert epoch == len(general) + len(bio)
        samples = [r for b in take(stream, 3 * epoch) for r in originals(b)]
        # Sources are told apart by the stream's own (source, row) ids (two folders may share a row's text);
        # the batches must hold exactly those rows.
        ids = stream.sample_ids(np.arange(3 * epoch, dtype=np.int64))
        assert samples == [rows[s][r] for s, r in ids]
        from_bio = [[r for s, r in ids[e * epoch:(e + 1) * epoch] if s == 1] for e in range(3)]
        # Each epoch holds exactly the source's quota: its share of the epoch, rounded (largest remainder).
        assert [len(b) for b in from_bio] == [stream.quota[1]] * 3
        assert abs(stream.quota[1] - epoch * weights[1] / sum(weights)) < 1
        first_epochs = [r for e in range(len(bio) // stream.quota[1]) for r in from_bio[e]]
        assert len(set(first_epochs)) == len(first_epochs)  # no row repeats before a full pass over the source
        if weights[1] * len(general) > weights[0] * len(bio):
            assert set(from_bio[0]) == set(range(len(bio)))  # up-weighted: every row in every epoch


def test_masking_rates_and_whole_words(packed):
    tokenizer, folders = packed
    tok = AutoTokenizer.from_pretrained(tokenizer)
    special = set(tok.all_special_ids)
    counts = Counter()
    for whole_word in (False, True):
        stream = ShardStream([(folders["general"], 1.0)], micro_batch_size=16, seed=2, whole_word_mask=whole_word)
        for batch in take(stream, 40):
            labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"].bool()
            orig = torch.where(labels != -100, labels, ids)
            chosen = labels != -100
            is_special = torch.tensor(np.isin(orig.numpy(), list(special)))
            assert not (chosen & is_special).any()
            if not whole_word:
                counts["candidates"] += int((mask & ~is_special).sum())
                counts["chosen"] += int(chosen.sum())
                counts["mask"] += int((chosen & (ids == tok.mask_token_id)).sum())
                counts["kept"] += int((chosen & (ids == orig)).sum())
                continue
            for row, row_chosen in zip(orig.tolist(), chosen.tolist()):
                tokens = tok.convert_ids_to_tokens(row)
                word, words = [], []
                for t, c in zip(tokens, row_chosen):
                    if not t.startswith("##") and word:
                        words.append(word)
                        word = []
                    word.append(c)
                words.append(word)
                assert all(all(w) or not any(w) for w in words[1:])  # a word is masked whole or not at all
                counts["whole_words_masked"] += sum(all(w) and len(w) > 1 for w in words[1:])
    assert 0.13 < counts["chosen"] / counts["candidates"] < 0.18
    assert 0.75 < counts["mask"] / counts["chosen"] < 0.85 and 0.06 < counts["kept"] / counts["chosen"] < 0.15
    assert counts["whole_words_masked"] > 20


def test_validation_split_is_read_in_order_with_fixed_masks(packed):
    _, folders = packed
    rows = shard_rows(folders["general"], "validation")
    parts = [list(iterate_split(folders["general"], batch_size=4, rank=r, world_size=2, seed=1)) for r in range(2)]
    seen = [row for part in parts for b in part for row in originals(b)]
    assert seen == rows
    again = list(iterate_split(folders["general"], batch_size=4, rank=0, world_size=2, seed=1))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(parts[0], again))


def test_clear_errors(packed, tmp_path):
    tokenizer, folders = packed
    general = folders["general"]
    with pytest.raises(ValueError, match="no such shard folder"):
        ShardStream([(str(tmp_path / "nope"), 1.0)])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="manifest.json: missing"):
        ShardStream([(str(tmp_path / "empty"), 1.0)])
    with pytest.raises(ValueError, match=r"general/manifest.json: packed with tokenizer .* fingerprint .*, not with the teacher.s"):
        ShardStream([(general, 1.0)], expected_fingerprint="0" * 64)
    with pytest.raises(ValueError, match=r"ids up to \d+ do not fit vocab_size 20"):
        ShardStream([(general, 1.0)], vocab_size=20)
    with pytest.raises(ValueError, match="rows of 48 tokens do not fit seq_len 32"):
        ShardStream([(general, 1.0)], seq_len=32)


def damaged_copy(folder, tmp_path, name="damaged"):
    """A copy of a packed folder, its manifest and the path of its first train shard."""
    copy = tmp_path / name
    shutil.copytree(folder, copy)
    manifest = json.load(open(copy / "manifest.json"))
    return copy, manifest, copy / manifest["splits"]["train"][0]["file"]


def write_manifest(folder, manifest):
    (folder / "manifest.json").write_text(json.dumps(manifest))


def record_shard(manifest, shard):
    """Make the manifest describe the shard's current bytes, so that only the Arrow reader can object."""
    entry = manifest["splits"]["train"][0]
    entry["bytes"], entry["sha256"] = shard.stat().st_size, hashlib.sha256(shard.read_bytes()).hexdigest()


BAD_SHARDS = [
    ("missing", r"u00000-00000.arrow: shard listed in manifest.json is missing"),
    ("truncated", r"u00000-00000.arrow: \d+ bytes but manifest.json says \d+; the shard is truncated"),
    ("bit flip", r"u00000-00000.arrow: sha256 \w+ does not match manifest.json \(\w+\); the shard is corrupt"),
    ("truncated, old manifest", r"u00000-00000.arrow: sha256 \w+ does not match manifest.json"),
    ("not arrow", r"u00000-00000.arrow: not a readable packed Arrow shard \("),
    ("other schema", r"u00000-00000.arrow: not a readable packed Arrow shard \("),
    ("rows", r"u00000-00000.arrow: 16 rows but manifest.json says 17"),
    ("seq_len", r"u00000-00000.arrow: rows of up to 48 tokens but manifest.json says seq_len 16"),
]


@pytest.mark.parametrize("fault, message", BAD_SHARDS, ids=[fault for fault, _ in BAD_SHARDS])
def test_bad_shards_stop_the_stream_when_it_is_built(packed, tmp_path, fault, message):
    """Every shard is checked against manifest.json before the first batch (before distill makes its run dir):
    one DataError naming the file. Each fault is made in a real packed folder."""
    _, folders = packed
    folder, manifest, shard = damaged_copy(folders["general"], tmp_path)
    if fault == "missing":
        shard.unlink()
    elif fault.startswith("truncated"):
        shard.write_bytes(shard.read_bytes()[:-100])
        if fault.endswith("old manifest"):  # manifests packed before sizes were recorded still load
            for entry in manifest["splits"]["train"]:
                del entry["bytes"]
    elif fault == "bit flip":
        data = bytearray(shard.read_bytes())
        data[len(data) // 2] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif fault == "not arrow":
        shard.write_bytes(shard.read_bytes()[:-100])
        record_shard(manifest, shard)
    elif fault == "other schema":
        with pa.ipc.new_file(str(shard), pa.schema([("text", pa.string())])) as writer:
            writer.write_batch(pa.record_batch([pa.array(["a"] * 16)], names=["text"]))
        record_shard(manifest, shard)
    elif fault == "rows":
        manifest["splits"]["train"][0]["rows"] += 1
    elif fault == "seq_len":  # today's symptom: "could not broadcast input array from shape (32,) into (16,)"
        manifest["seq_len"] = 16
    write_manifest(folder, manifest)
    with pytest.raises(DataError, match=message) as caught:
        ShardStream([(str(folder), 1.0)], micro_batch_size=4)
    assert "\n" not in str(caught.value) and str(shard) in str(caught.value)
    if fault == "missing":
        return
    with pytest.raises(DataError, match=message):  # the held-out reader checks its split the same way
        next(iterate_split(str(folder), "train"))


def test_manifests_without_sizes_still_load(packed, tmp_path):
    _, folders = packed
    folder, manifest, _ = damaged_copy(folders["general"], tmp_path, "old")
    assert all("bytes" in entry for entry in manifest["splits"]["train"])  # recorded since issue 16
    for split in manifest["splits"].values():
        for entry in split:
            del entry["bytes"]
    write_manifest(folder, manifest)
    old = take(ShardStream([(str(folder), 1.0)], micro_batch_size=4, seed=1), 3)
    new = take(ShardStream([(folders["general"], 1.0)], micro_batch_size=4, seed=1), 3)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(old, new) for k in a)
