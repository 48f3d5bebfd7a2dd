"""PubMed XML: structured abstracts, missing abstracts, deleted citations, entity declarations, truncated .gz."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pytest
from data_prep_helpers import build_wordpiece_tokenizer
from transformers import AutoTokenizer

from data_prep.pack_corpus import main

ARTICLE = """<PubmedArticle><MedlineCitation Status="MEDLINE"><PMID Version="1">{pmid}</PMID><Article PubModel="Print">
<ArticleTitle>{title}</ArticleTitle>{abstract}</Article></MedlineCitation>
<PubmedData><ReferenceList><Reference><Citation>not part of the text</Citation></Reference></ReferenceList></PubmedData>
</PubmedArticle>
"""
DOCTYPE = ('<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
           '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">')
HEADER = f"""<?xml version="1.0" encoding="utf-8"?>
{DOCTYPE}
<PubmedArticleSet>
"""


def article(pmid, title, *sections):
    if not sections:
        return ARTICLE.format(pmid=pmid, title=title, abstract="")
    texts = "".join(f'<AbstractText Label="{label}" NlmCategory="{label}">{text}</AbstractText>' if label
                    else f"<AbstractText>{text}</AbstractText>" for label, text in sections)
    other = "<OtherAbstract><AbstractText>other language abstract</AbstractText></OtherAbstract>"
    return ARTICLE.format(pmid=pmid, title=title, abstract=f"<Abstract>{texts}</Abstract>{other}")


def write_gz(path, body, header=HEADER, close=True):
    data = (header + body + ("</PubmedArticleSet>\n" if close else "")).encode()
    with gzip.open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_wordpiece_tokenizer(str(tmp_path_factory.mktemp("tok") / "wordpiece"))


def pack(tokenizer, out, *inputs, extra=()):
    return main(["--no-progress", "--format", "pubmed", "--input", *map(str, inputs), "--tokenizer", tokenizer,
                 "--out", str(out), "--seq-len", "512", "--validation-fraction", "0", *extra])


def decoded_rows(tokenizer, out, decode=True):
    tok = AutoTokenizer.from_pretrained(tokenizer)
    manifest = json.load(open(out / "manifest.json"))
    rows = []
    for shard in manifest["splits"]["train"]:
        for ids in pa.ipc.open_file(out / shard["file"]).read_all().column("input_ids").to_pylist():
            rows.append(tok.decode(ids, skip_special_tokens=True) if decode else ids)
    return manifest, rows


def test_articles_structured_abstracts_and_skips(tokenizer, tmp_path):
    body = (
        article(1, "Cell <i>gene</i> study", ("BACKGROUND", "the cell"), ("METHODS", "a trial"), ("RESULTS", "risk"))
        + article(2, "Plain", (None, "the blood &amp; brain"))
        + article(3, "No abstract at all")
        + "<DeleteCitation><PMID Version=\"1\">7</PMID><PMID Version=\"1\">8</PMID></DeleteCitation>\n"
    )
    write_gz(tmp_path / "pubmed25n0001.xml.gz", body)
    assert pack(tokenizer, tmp_path / "out", tmp_path / "pubmed*.xml.gz") == 0
    manifest, rows = decoded_rows(tokenizer, tmp_path / "out", decode=False)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    expected = ["Cell gene study\nBACKGROUND: the cell\nMETHODS: a trial\nRESULTS: risk", "Plain\nthe blood & brain"]
    assert rows == [tok(t)["input_ids"] for t in expected]
    source = manifest["sources"][0]
    assert source["status"] == "ok" and source["docs_read"] == 2
    assert source["docs_skipped"] == {"deleted citation": 2, "no abstract": 1}


def test_external_entity_is_never_expanded(tokenizer, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("zzsecretzz")
    header = HEADER.replace(DOCTYPE, f'<!DOCTYPE PubmedArticleSet [ <!ENTITY xxe SYSTEM "file://{secret}"> ]>')
    write_gz(tmp_path / "pubmed_x.xml.gz", article(1, "Title &xxe; end", (None, "the cell &xxe; gene")), header)
    assert pack(tokenizer, tmp_path / "out", tmp_path / "pubmed_x.xml.gz") == 0
    manifest, rows = decoded_rows(tokenizer, tmp_path / "out")
    assert [r.replace(" ", "") for r in rows] == ["titleendthecellgene"]
    source = manifest["sources"][0]
    assert source["docs_read"] == 1
    assert "external entity 'xxe' declared; not expanded" in source["bad_records"][0]["reason"]
    assert pack(tokenizer, tmp_path / "strict", tmp_path / "pubmed_x.xml.gz", extra=["--strict"]) == 2


def test_truncated_gz_keeps_what_was_read_and_marks_the_file(tokenizer, tmp_path, capsys):
    body = "".join(article(i, f"Title {i}", (None, "the cell " * 20)) for i in range(400))
    path = write_gz(tmp_path / "pubmed_t.xml.gz", body)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    write_gz(tmp_path / "pubmed_u.xml.gz", article(1, "Intact", (None, "the gene")))
    assert pack(tokenizer, tmp_path / "out", tmp_path / "pubmed_*.xml.gz") == 0
    assert "pubmed_t.xml.gz" in capsys.readouterr().err
    manifest, rows = decoded_rows(tokenizer, tmp_path / "out")
    truncated, intact = manifest["sources"]
    assert truncated["status"] == "truncated"
    assert "truncated or corrupt compressed file" in truncated["bad_records"][0]["reason"]
    assert 0 < truncated["docs_read"] < 400 and intact["status"] == "ok" and intact["docs_read"] == 1
    assert len(rows) == truncated["docs_read"] + 1
    assert pack(tokenizer, tmp_path / "strict", tmp_path / "pubmed_t.xml.gz", extra=["--strict"]) == 2


def test_unterminated_xml_is_reported_as_corrupt(tokenizer, tmp_path):
    write_gz(tmp_path / "pubmed_c.xml.gz", article(1, "Only", (None, "the cell")) + "<PubmedArticle><Medline",
             close=False)
    assert pack(tokenizer, tmp_path / "out", tmp_path / "pubmed_c.xml.gz") == 0
    source = json.load(open(tmp_path / "out" / "manifest.json"))["sources"][0]
    assert source["status"] == "corrupt" and source["docs_read"] == 1
    assert "XML error" in source["bad_records"][0]["reason"]
