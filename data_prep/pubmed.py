"""PubMed/MEDLINE baseline and update XML → one document per citation: title + abstract.

Two layouts, told apart by their elements (any file name, .xml or .xml.gz):
  PubmedArticleSet    (pubmed25n0001.xml.gz; baselines since 2017) records <PubmedArticle>, each holding a
                      <MedlineCitation>; <PubmedBookArticle> records are skipped as book articles
  MedlineCitationSet  (medline16n0001.xml.gz; baselines up to 2016) records <MedlineCitation> directly
In both, the text is MedlineCitation/Article/ArticleTitle and Article/Abstract/AbstractText, and deletions are a
<DeleteCitation> holding <PMID> elements (DTD: MedlineCitationSet (MedlineCitation*, DeleteCitation?),
DeleteCitation (PMID+)); every deleted PMID is skipped and counted.

Structured abstracts keep their labelled sections in order ("BACKGROUND: ...\\nMETHODS: ..."). Citations
without an abstract are skipped and counted. The parser is expat driven directly: no DTD is fetched, external
entities are never opened, and entity references other than the predefined XML ones are dropped instead of
expanded (a declaration is reported as a bad record).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from xml.parsers import expat

from data_prep.units import BROKEN_STREAM_ERRORS, SourceReport, Unit

CHUNK_BYTES = 1 << 16  # decompressed bytes per parse step; a truncated .gz loses at most this much
ROOTS = ("PubmedArticleSet", "MedlineCitationSet")


def _is_citation(tag: str, parent: str) -> bool:
    """The element that holds one citation: a PubmedArticle (since 2017), or a MedlineCitation directly under the
    MedlineCitationSet (before; in the newer layout a MedlineCitation sits inside its PubmedArticle)."""
    if tag == "MedlineCitation":
        return parent == "MedlineCitationSet"
    return tag in ("PubmedArticle", "PubmedBookArticle")


class _ArticleCollector:
    """expat callbacks that assemble citations (a PubmedArticle, or a MedlineCitation directly under a
    MedlineCitationSet); finished ones pile up in self.done until the reader drains them."""

    def __init__(self, report: SourceReport):
        self.report = report
        self.stack: list[str] = []
        self.done: list[str] = []
        self.title: list[str] = []
        self.sections: list[tuple[str, list[str]]] = []
        self.capture: list[str] | None = None  # buffer that character data goes to, if any
        self.article_count = 0

    def start(self, tag: str, attrs: dict) -> None:
        parent = self.stack[-1] if self.stack else ""
        if not self.stack and tag not in ROOTS:
            self.report.found = f"root element <{tag}>, expected <{'> or <'.join(ROOTS)}>"
        self.stack.append(tag)
        if _is_citation(tag, parent):
            self.article_count += 1
            self.title, self.sections = [], []
        elif tag == "ArticleTitle" and parent == "Article":
            self.capture = self.title
        elif tag == "AbstractText" and parent == "Abstract" and "Article" in self.stack:
            self.sections.append((attrs.get("Label", ""), []))
            self.capture = self.sections[-1][1]

    def end(self, tag: str) -> None:
        self.stack.pop()
        parent = self.stack[-1] if self.stack else ""
        if tag in ("ArticleTitle", "AbstractText"):
            self.capture = None
        elif tag == "PMID" and parent == "DeleteCitation":
            self.report.skip("deleted citation")
        elif tag == "PubmedBookArticle":
            self.report.skip("book article")
        elif _is_citation(tag, parent):
            self._finish_article()

    def _finish_article(self) -> None:
        sections = [(label, " ".join("".join(parts).split())) for label, parts in self.sections]
        sections = [(label, text) for label, text in sections if text]
        if not sections:
            self.report.skip("no abstract")
            return
        title = " ".join("".join(self.title).split())
        body = "\n".join(f"{label}: {text}" if label else text for label, text in sections)
        self.done.append(f"{title}\n{body}" if title else body)

    def text(self, data: str) -> None:
        if self.capture is not None:
            self.capture.append(data)

    def entity_declared(self, name, is_parameter, value, base, system_id, public_id, notation) -> None:
        kind = "external" if system_id or public_id else "internal"
        self.report.bad(f"after article {self.article_count}", f"{kind} entity '{name}' declared; not expanded",
                        document=False)


def read_pubmed(unit: Unit, report: SourceReport) -> Iterator[str]:
    collector = _ArticleCollector(report)
    parser = expat.ParserCreate()
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = collector.start
    parser.EndElementHandler = collector.end
    parser.CharacterDataHandler = collector.text
    parser.EntityDeclHandler = collector.entity_declared
    # A default handler makes expat pass internal entity references through unexpanded (to this no-op),
    # and an external-entity handler returning 1 skips external references without opening anything.
    parser.DefaultHandler = lambda data: None
    parser.ExternalEntityRefHandler = lambda context, base, system_id, public_id: 1
    opener = gzip.open if unit.path.endswith(".gz") else open
    with opener(unit.path, "rb") as f:
        while True:
            try:
                chunk = f.read(CHUNK_BYTES)
            except BROKEN_STREAM_ERRORS as e:
                report.broken_file("truncated", f"after article {collector.article_count}",
                                   f"truncated or corrupt compressed file ({e})")
                break
            try:
                parser.Parse(chunk, not chunk)
            except expat.ExpatError as e:
                report.broken_file("corrupt", f"line {e.lineno} column {e.offset}",
                                   f"XML error ({expat.ErrorString(e.code)})")
                break
            yield from collector.done
            collector.done.clear()
            if not chunk:
                break
    yield from collector.done
