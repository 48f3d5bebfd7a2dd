"""Fixed subsets of the real benchmark files, and the student architecture before distillation (random init).

    python bench/real_subsets.py subsets --data ../shared/data --out runs/bench/data [--train 400 ...]
    python bench/real_subsets.py random-init --like runs/demo/distill/export --out runs/bench/random-init
    python bench/real_subsets.py step-zero --config configs/distill/cpu.yaml --out runs/bench/teacher-init

Used by ``bench/real_benchmarks.sh`` and ``bench/gpu_glue.sh``. The subsets are written under ``--out`` (never
into the repository): a seeded sample of the training rows / sentences, the GLUE dev sets whole, NER devel and
test cut to ``--eval`` sentences where they are longer (``--eval 0`` keeps them whole). GLUE files get Hugging Face
column names with a header (CoLA's GLUE file has none: source, label, original label, sentence; the STS Benchmark
comes in its own layout: genre, file, year, id, score, sentence1, sentence2).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
from pathlib import Path

from data_prep.files import write_text_atomic

GLUE = {  # task: (columns in the GLUE file or None when it has a header, columns written)
    "rte": (None, ["sentence1", "sentence2", "label"]),
    "cola": (["source", "label", "original_label", "sentence"], ["sentence", "label"]),
    # The STS Benchmark's own layout (sts-{train,dev}.tsv, no header; some rows carry two extra source fields).
    "stsb": (["genre", "file", "year", "id", "label", "sentence1", "sentence2"], ["sentence1", "sentence2", "label"]),
}
FILES = {"stsb": ("sts-train.tsv", "sts-dev.tsv")}
NER = ("NCBI-disease", "BC5CDR-chem", "BC5CDR-disease")


def read_tsv(path: Path, columns: list[str] | None) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if columns is None:
        columns, rows = rows[0], rows[1:]
    return [dict(zip(columns, r)) for r in rows if r]


def write_text(path: Path, text: str) -> None:
    """Atomic: a sweep already reading the subsets never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


def write_tsv(path: Path, rows: list[dict], columns: list[str]) -> None:
    lines = ["\t".join(columns)] + ["\t".join(r[c] for c in columns) for r in rows]  # fields hold no tab
    write_text(path, "\n".join(lines) + "\n")


def read_sentences(path: Path) -> list[str]:
    """BioBERT NER files: blocks of ``token<TAB>tag`` lines separated by blank lines."""
    return [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]


def sample(items: list, n: int, seed: int) -> list:
    if not n or n >= len(items):
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), n))  # file order kept
    return [items[i] for i in keep]


def make_subsets(args) -> dict:
    data, out, sizes = Path(args.data), Path(args.out), {}
    for task, (columns, written) in GLUE.items():
        if not (data / "glue" / task).is_dir():
            continue
        train_file, dev_file = FILES.get(task, ("train.tsv", "dev.tsv"))
        train = sample(read_tsv(data / "glue" / task / train_file, columns), args.train, args.seed)
        dev = read_tsv(data / "glue" / task / dev_file, columns)
        write_tsv(out / "glue" / task / "train.tsv", train, written)
        write_tsv(out / "glue" / task / "dev.tsv", dev, written)
        sizes[task] = {"train": len(train), "dev": len(dev)}
    for name in NER:
        if not (data / "ner" / name).is_dir():
            continue
        sizes[name] = {}
        devel = args.eval if args.devel is None else args.devel
        for split, n in (("train", args.train), ("devel", devel), ("test", args.eval)):
            sentences = sample(read_sentences(data / "ner" / name / f"{split}.tsv"), n, args.seed)
            write_text(out / "ner" / name / f"{split}.tsv", "\n\n".join(s.strip("\n") for s in sentences) + "\n\n")
            sizes[name][split] = len(sentences)
    write_text(out / "sizes.json", json.dumps(sizes, indent=2) + "\n")
    print(json.dumps(sizes))
    return sizes


def random_init(args) -> None:
    """The distilled student's architecture with fresh weights (seeded), its tokenizer and model code."""
    import torch
    from transformers import AutoTokenizer

    from minialbert import MiniAlbertConfig, MiniAlbertForMaskedLM
    from minialbert.remote_code import add_remote_code

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(args.seed)
    MiniAlbertForMaskedLM(MiniAlbertConfig.from_pretrained(args.like)).save_pretrained(out)
    add_remote_code(out)
    AutoTokenizer.from_pretrained(args.like).save_pretrained(out)
    print(f"random-init student like {args.like} -> {out}")


def step_zero(args) -> None:
    """The student a run config starts from (``distill.build_student``, the run's seed): e.g. the teacher-init
    student before any distillation, saved like an export (weights, tokenizer, model code)."""
    import torch
    from transformers import AutoTokenizer

    from minialbert.config import load_run_config
    from minialbert.student import build_student
    from minialbert.remote_code import add_remote_code
    from minialbert.teacher import load_teacher

    cfg = load_run_config(args.config, args.overrides)
    teacher = load_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map)
    torch.manual_seed(cfg.train.seed)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    build_student(cfg, teacher).save_pretrained(out)
    add_remote_code(out)
    AutoTokenizer.from_pretrained(cfg.teacher_path()).save_pretrained(out)
    print(f"step-0 student of {args.config} (student.init={cfg.student.init}) -> {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("subsets")
    s.add_argument("--data", required=True, help="the real files (../shared/data layout)")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=400, help="training rows / sentences per set (0: all)")
    s.add_argument("--eval", type=int, default=0, help="NER devel and test sentences per set (0: all)")
    s.add_argument("--devel", type=int, default=None, help="NER devel sentences per set (default: --eval)")
    s.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("random-init")
    r.add_argument("--like", required=True, help="a student folder whose config.json and tokenizer are used")
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=0)
    z = sub.add_parser("step-zero")
    z.add_argument("--config", required=True, help="a run config (configs/distill/*.yaml)")
    z.add_argument("--out", required=True)
    z.add_argument("overrides", nargs="*", help="section.key=value, e.g. student.init=random")
    args = p.parse_args(argv)
    {"subsets": make_subsets, "random-init": random_init, "step-zero": step_zero}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
