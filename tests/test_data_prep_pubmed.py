"""PubMed XML (both MEDLINE layouts): structured abstracts, missing abstracts, deleted citations, entity declarations,
truncated .gz, files giving no documents."""

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


# The older distribution (baselines up to 2016): root MedlineCitationSet, one MedlineCitation per record, same
# DeleteCitation. Element names follow nlmmedlinecitationset_160101.dtd.
MEDLINE_DOCTYPE = ('<!DOCTYPE MedlineCitationSet PUBLIC "-//NLM//DTD Medline Citation, 1st January, 2016//EN" '
                   '"http://www.nlm.nih.gov/databases/dtd/nlmmedlinecitationset_160101.dtd">')
MEDLINE_HEADER = f"""<?xml version="1.0" encoding="UTF-8"?>
{MEDLINE_DOCTYPE}
<MedlineCitationSet>
"""
MEDLINE_CITATION = """<MedlineCitation Owner="NLM" Status="MEDLINE">
<PMID Version="1">{pmid}</PMID>
<DateCreated><Year>1976</Year><Month>01</Month><Day>16</Day></DateCreated>
<Article PubModel="Print">
<Journal><ISSN IssnType="Print">0006-2944</ISSN><JournalIssue CitedMedium="Print"><Volume>13</Volume><Issue>2</Issue>
<PubDate><Year>1975</Year><Month>Jun</Month></PubDate></JournalIssue><Title>Biochemical medicine</Title>
<ISOAbbreviation>Biochem Med</ISOAbbreviation></Journal>
<ArticleTitle>{title}</ArticleTitle>
<Pagination><MedlinePgn>117-26</MedlinePgn></Pagination>
{abstract}<AuthorList CompleteYN="Y"><Author ValidYN="Y"><LastName>Makar</LastName><ForeName>A B</ForeName>
<Initials>AB</Initials></Author></AuthorList>
<Language>eng</Language>
<PublicationTypeList><PublicationType UI="D016428">Journal Article</PublicationType></PublicationTypeList>
</Article>
<MedlineJournalInfo><Country>United States</Country><MedlineTA>Biochem Med</MedlineTA><NlmUniqueID>0151424</NlmUniqueID>
</MedlineJournalInfo>
<CommentsCorrectionsList><CommentsCorrections RefType="CommentIn"><RefSource>Biochem Med 1976</RefSource>
<PMID Version="1">99</PMID></CommentsCorrections></CommentsCorrectionsList>
<MeshHeadingList><MeshHeading><DescriptorName MajorTopicYN="N" UI="D000445">Aldehyde Oxidoreductases</DescriptorName>
</MeshHeading></MeshHeadingList>
<OtherAbstract Type="Publisher" Language="eng"><AbstractText>other abstract, not the text</AbstractText></OtherAbstract>
</MedlineCitation>
"""
DELETIONS = "<DeleteCitation>\n<PMID Version=\"1\">7</PMID>\n<PMID Version=\"1\">8</PMID>\n</DeleteCitation>\n"


def medline_citation(pmid, title, *sections):
    texts = "".join(f'<AbstractText Label="{label}" NlmCategory="{label}">{text}</AbstractText>' if label
                    else f"<AbstractText>{text}</AbstractText>" for label, text in sections)
    abstract = f"<Abstract>{texts}<CopyrightInformation>(c) 1975</CopyrightInformation></Abstract>\n" if texts else ""
    return MEDLINE_CITATION.format(pmid=pmid, title=title, abstract=abstract)


def test_older_medline_citation_set_packs_like_the_pubmed_layout(tokenizer, tmp_path):
    citations = [(1, "Formate <i>assay</i> in body fluids", [("BACKGROUND", "the blood"), ("RESULTS", "a risk")]),
                 (2, "Plain &amp; simple", [(None, "the brain &lt; the heart")]),
                 (3, "No abstract", [])]
    old = "".join(medline_citation(pmid, title, *sections) for pmid, title, sections in citations) + DELETIONS
    new = "".join(article(pmid, title, *sections) for pmid, title, sections in citations) + DELETIONS
    (tmp_path / "old").mkdir()
    with gzip.open(tmp_path / "old" / "medline16n0001.xml.gz", "wb") as f:
        f.write((MEDLINE_HEADER + old + "</MedlineCitationSet>\n").encode())
    second = medline_citation(4, "Plain", (None, "the gene"))  # uncompressed, as some mirrors keep them
    (tmp_path / "old" / "medline16n0002.xml").write_text(MEDLINE_HEADER + second + "</MedlineCitationSet>\n")
    write_gz(tmp_path / "new.xml.gz", new)
    assert pack(tokenizer, tmp_path / "out_old", tmp_path / "old" / "medline16n*") == 0
    assert pack(tokenizer, tmp_path / "out_new", tmp_path / "new.xml.gz") == 0
    manifest, rows = decoded_rows(tokenizer, tmp_path / "out_old", decode=False)
    _, new_rows = decoded_rows(tokenizer, tmp_path / "out_new", decode=False)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    expected = ["Formate assay in body fluids\nBACKGROUND: the blood\nRESULTS: a risk",
                "Plain & simple\nthe brain < the heart", "Plain\nthe gene"]
    assert rows == [tok(t)["input_ids"] for t in expected] and new_rows == rows[:2]
    first, second = manifest["sources"]
    assert first["status"] == "ok" and first["docs_read"] == 2 and first["warnings"] == []
    assert first["docs_skipped"] == {"deleted citation": 2, "no abstract": 1}
    assert second["docs_read"] == 1 and second["docs_skipped"] == {} and manifest["totals"]["warnings"] == 0


def test_a_file_giving_no_documents_is_a_warning_or_fatal_with_strict(tokenizer, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    write_gz(tmp_path / "in" / "a_good.xml.gz", article(1, "Good", (None, "the cell")))
    # A PMC file handed to --format pubmed by mistake, and an update file holding only deletions.
    (tmp_path / "in" / "b_pmc.xml").write_text('<?xml version="1.0"?>\n<pmc-articleset><article><front><article-meta>'
                                               '<title-group><article-title>T</article-title></title-group>'
                                               '</article-meta></front></article></pmc-articleset>\n')
    write_gz(tmp_path / "in" / "c_deletions.xml.gz", DELETIONS)
    (tmp_path / "in" / "d_empty.xml").write_text("")
    assert pack(tokenizer, tmp_path / "out", tmp_path / "in" / "*.xml*") == 0
    err = capsys.readouterr().err
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    good, pmc, deletions, empty = manifest["sources"]
    assert good["warnings"] == [] and empty["warnings"] == [] and manifest["totals"]["warnings"] == 2
    size = (tmp_path / "in" / "b_pmc.xml").stat().st_size
    assert pmc["status"] == "ok" and pmc["warnings"] == [
        f"no documents from a non-empty file ({size} bytes; root element <pmc-articleset>, "
        f"expected <PubmedArticleSet> or <MedlineCitationSet>)"]
    assert deletions["warnings"][0].endswith("bytes; skipped: deleted citation 2)")
    summary = err[err.index(f"{tmp_path / 'out'}: 1 documents"):].splitlines()
    assert "1 bad records, 2 warnings" in summary[0] and empty["status"] == "corrupt"  # an empty file is no XML
    assert summary[1].startswith("warning: unit 1 b_pmc.xml: no documents from a non-empty file")
    assert summary[2].startswith("warning: unit 2 c_deletions.xml.gz: no documents") and len(summary) == 3

    assert pack(tokenizer, tmp_path / "strict", tmp_path / "in" / "b_pmc.xml", extra=["--strict"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'in' / 'b_pmc.xml'}: no documents from a non-empty file")
    assert last.endswith("(--strict)") and not (tmp_path / "strict" / "manifest.json").exists()
    assert pack(tokenizer, tmp_path / "strict_ok", tmp_path / "in" / "a_good.xml.gz", extra=["--strict"]) == 0
