"""Real English text available offline on any Debian machine: WordNet's glosses and usage examples.

Debian's ``wordnet-base`` package ships ``/usr/share/wordnet/data.{noun,verb,adj,adv}``: one synset a line,
``offset lex_filenum ss_type w_cnt word lex_id ... | gloss; "example"; "example"``. Each synset becomes a
document ("words: definition. examples."). The lexicographer file number splits off a biomedical subset: body,
disease/state, substance, animal and plant senses. Used by the demo; a corpus reader like any other.

    python -m data_prep.wordnet --out DIR [--wordnet /usr/share/wordnet]
        writes DIR/general.jsonl, DIR/bio.jsonl and DIR/task/{train,validation}.jsonl
        (a labelled task: is a definition biomedical?), then pack them with data_prep.pack_corpus --format jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from data_prep.files import atomic_write, write_text_atomic

DEFAULT_WORDNET = "/usr/share/wordnet"
# Lexicographer files (wndb(5WN)): 05 noun.animal, 08 noun.body, 20 noun.plant, 26 noun.state, 27 noun.substance.
BIO_LEXFILES = {5, 8, 20, 26, 27}
PARTS = ("noun", "verb", "adj", "adv")


def ensure_wordnet(wordnet_dir: str | Path = DEFAULT_WORDNET) -> None:
    """Install Debian's wordnet-base when ``wordnet_dir`` lacks it (the package's default place only)."""
    if (Path(wordnet_dir) / "data.noun").is_file():
        return
    print("installing Debian's wordnet-base (real English text, offline after this)", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wordnet-base"], env=env, check=True, stdout=subprocess.DEVNULL)


def read_synsets(wordnet_dir: str = DEFAULT_WORDNET):
    """Yield (lex_filenum, words, definition, examples) for every synset, streaming."""
    for part in PARTS:
        path = Path(wordnet_dir) / f"data.{part}"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: WordNet data missing (install Debian's wordnet-base: apt-get install wordnet-base)")
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # the licence header
                head, gloss = line.split("|", 1)
                fields = head.split()
                lexfile, count = int(fields[1]), int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
                pieces = [p.strip() for p in gloss.strip().split(";")]
                definition = pieces[0]
                examples = [p.strip('"') for p in pieces[1:] if p.startswith('"')]
                yield lexfile, words, definition, examples


def document(words: list[str], definition: str, examples: list[str]) -> str:
    text = f"{', '.join(words)}: {definition}."
    return text + (" " + " ".join(e if e.endswith((".", "!", "?")) else e + "." for e in examples) if examples else "")


def write_corpus(out: str | Path, wordnet_dir: str = DEFAULT_WORDNET, task_size: int = 600, seed: int = 0) -> dict:
    """general.jsonl (all synsets), bio.jsonl (the biomedical subset) and a balanced labelled task."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"general": 0, "bio": 0}
    task: dict[int, list[str]] = {0: [], 1: []}
    with atomic_write(out / "general.jsonl") as general_tmp, atomic_write(out / "bio.jsonl") as bio_tmp, \
            open(general_tmp, "w", encoding="utf-8") as general, open(bio_tmp, "w", encoding="utf-8") as bio:
        for lexfile, words, definition, examples in read_synsets(wordnet_dir):
            text = document(words, definition, examples)
            general.write(json.dumps({"text": text}) + "\n")
            counts["general"] += 1
            is_bio = lexfile in BIO_LEXFILES
            if is_bio:
                bio.write(json.dumps({"text": text}) + "\n")
                counts["bio"] += 1
            task[int(is_bio)].append(definition)  # the definition alone: the words would give the answer away
    rng = random.Random(seed)
    rows = [(s, label) for label in (0, 1) for s in rng.sample(task[label], task_size)]
    rng.shuffle(rows)
    cut = int(len(rows) * 0.75)
    (out / "task").mkdir(exist_ok=True)
    for split, part in (("train", rows[:cut]), ("validation", rows[cut:])):
        write_text_atomic(out / "task" / f"{split}.jsonl",
                          "".join(json.dumps({"sentence": s, "label": label, "idx": 0}) + "\n" for s, label in part))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data_prep.wordnet", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--wordnet", default=DEFAULT_WORDNET)
    p.add_argument("--task-size", type=int, default=600, help="examples per class in the labelled task")
    args = p.parse_args(argv)
    try:
        counts = write_corpus(args.out, args.wordnet, args.task_size)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {counts['general']} general and {counts['bio']} biomedical documents to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
