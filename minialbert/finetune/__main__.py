"""Command line: fine-tune and evaluate on GLUE or BioBERT-style NER, and tabulate the results.

One process (CPU or one GPU; bf16 autocast where the device has it)::

    python -m minialbert.finetune glue --task rte --model runs/student/export --data glue/ --lr 1e-4 3e-4 --seeds 1 2 3
    python -m minialbert.finetune glue --task mrpc --model runs/student/export --data glue/ --adapters-only
    python -m minialbert.finetune glue --task sst2 --model bert-base-uncased-folder --name bert-base
    python -m minialbert.finetune ner --data biobert/NCBI-disease --model runs/student/export --epochs 5
    python -m minialbert.finetune report runs/finetune > results.md
    python -m minialbert.finetune merge runs/ft/seed1 runs/ft/seed2 runs/ft/seed3 --out runs/ft/all-seeds

On Slurm, wrap the same command in ``srun`` (one task, one GPU); runs are independent, so a grid over
tasks is best submitted as a job array. Every run writes ``result.json``; every sweep ``summary.json``
(layout: ``minialbert.finetune.sweep``). Bad input ends with one ``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from . import InputError


def add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="MiniALBERT or any Hugging Face encoder folder (save_pretrained)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder)")
    p.add_argument("--name", help="row name in reports (default: the model folder's name)")
    p.add_argument("--adapters-only", action="store_true",
                   help="train only the adapters and the task head (MiniALBERT); saves only those weights")
    p.add_argument("--lr", type=float, nargs="+",
                   help="learning rate(s); several run a grid (default 5e-5, or 2e-3 with --adapters-only)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[42], help="several seeds report mean ± std")
    p.add_argument("--max-length", type=int, default=128, help="word pieces per sequence (capped by the model)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--out", help="output folder (default runs/finetune/<kind>-<task>-<name>-<mode>)")
    p.add_argument("--save", choices=["none", "best", "all"], default="best",
                   help="keep the weights of no run, the single best run, or every run")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: bf16 autocast where the device supports it")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest for tiny models on a busy machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    d = p.add_argument_group("task distillation (docs/finetune.md)")
    d.add_argument("--distill-from", metavar="DIR",
                   help="learn from a fine-tuned teacher: the --out folder of its finetune run on this task (or a "
                        "saved model folder); its predictions are mixed with the gold labels")
    d.add_argument("--distill-weight", type=float, default=0.5,
                   help="the teacher term's share on examples with a gold label (copies from --augment: all)")
    d.add_argument("--distill-temperature", type=float, default=1.0, help="softens both distributions (classes)")
    d.add_argument("--distill-hidden", type=float, default=0.0, metavar="W",
                   help="add W x the hidden-state term (the teacher runs alongside; same tokenizer and width only)")
    d.add_argument("--augment", type=int, default=0, metavar="K",
                   help="K new copies of each training sentence (word replacement), labelled by the teacher only")
    d.add_argument("--augment-source", choices=["auto", "wordnet"], default="auto",
                   help="auto: the general teacher's MLM head where it has one, and WordNet synonyms")
    d.add_argument("--augment-seed", type=int, default=1, help="the copies are the same for the same seed")
    d.add_argument("--wordnet", default="/usr/share/wordnet", help="WordNet data (Debian's wordnet-base)")


def build_parser() -> argparse.ArgumentParser:
    from .glue import TASKS

    parser = argparse.ArgumentParser(prog="python -m minialbert.finetune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    glue = sub.add_parser("glue", help="fine-tune and evaluate on one GLUE task (validation split)")
    glue.add_argument("--task", required=True, choices=list(TASKS))
    glue.add_argument("--data", nargs="+",
                      help="local data: a save_to_disk folder, a folder of split files, or files "
                           "(train.tsv dev.tsv | split=path); default: the datasets hub")
    glue.add_argument("--pair-encoding", choices=["auto", "cross", "siamese"], default="auto",
                      help="sentence pairs of a similarity task (stsb): 'cross' one sequence into a head, 'siamese' "
                           "each sentence pooled alone, scored by cosine; auto: siamese for a sentence-transformers "
                           "folder (modules.json), else cross")
    add_training_flags(glue)
    ner = sub.add_parser("ner", help="fine-tune on a BioBERT-layout NER folder; entity-level P/R/F1")
    ner.add_argument("--data", required=True, help="folder with train.tsv, devel.tsv, test.tsv (token<TAB>label)")
    ner.add_argument("--window-overlap", type=int, default=32,
                     help="word pieces of context shared by consecutive windows of a long sentence")
    ner.add_argument("--strict", action="store_true",
                     help="a training set without entity tags (every label O) is an error instead of a warning")
    add_training_flags(ner)
    report = sub.add_parser("report", help="markdown table of the summaries found under the given folders")
    report.add_argument("paths", nargs="+", help="summary.json files or folders searched recursively")
    report.add_argument("--out", help="also write the table to this file")
    merge = sub.add_parser("merge", help="one summary.json over sweeps of one model and task run as separate jobs")
    merge.add_argument("sources", nargs="+", help="finetune --out folders (e.g. one per seed)")
    merge.add_argument("--out", required=True, help="folder for the merged summary.json (the runs stay in place)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "glue":
            from .glue import run_glue

            run_glue(args)
        elif args.command == "ner":
            from .ner import run_ner

            run_ner(args)
        elif args.command == "merge":
            from .sweep import merge_sweeps

            summary = merge_sweeps(args.sources, args.out)
            print(f"merged {sum(len(g['seeds']) for g in summary['grid'])} runs into {args.out}/summary.json")
        else:
            from .report import run_report

            run_report(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
