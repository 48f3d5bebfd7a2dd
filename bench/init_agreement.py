"""What the initialisation alone gives: a student's agreement with its teacher at step 0, random vs teacher init.

    .venv/bin/python bench/init_agreement.py [--config configs/distill/cpu.yaml] [--batches 4] [overrides ...]

Builds the run config's student exactly as ``distill.py`` does (same seed) with ``student.init=random`` and
``student.init=teacher`` and measures, on the held-out split of every shard folder of the config: the hidden-state
cosine per recursion and its mapped teacher layer, the attention KL per recursion, the sentence-embedding cosine,
and the masked-LM accuracy of the student's head on 15 % masked tokens (meaningful only where the teacher has an
MLM head to copy). Prints a markdown table (docs/results.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minialbert.agreement import measure_agreement  # noqa: E402
from minialbert.config import load_run_config  # noqa: E402
from minialbert.data import ShardStream, iterate_split  # noqa: E402
from minialbert.student import build_student  # noqa: E402
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM  # noqa: E402
from minialbert.teacher import load_teacher  # noqa: E402


@torch.no_grad()
def mlm_accuracy(student, folders: list[str], vocab_size: int, batches: int) -> float:
    stream = ShardStream([(f, 1.0) for f in folders], split="validation", micro_batch_size=16, seed=0,
                         vocab_size=vocab_size)
    right = total = 0
    for _, batch in zip(range(batches), stream):
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = batch["labels"] != -100
        right += int((logits.argmax(-1)[picked] == batch["labels"][picked]).sum())
        total += int(picked.sum())
    return right / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/distill/cpu.yaml")
    p.add_argument("--batches", type=int, default=4, help="held-out batches of 16 per shard folder")
    p.add_argument("--after", nargs="*", default=[], metavar="EXPORT",
                   help="also measure these exported students (e.g. the run's export: after distillation)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    rows = ["| init | hidden cosine per recursion | attention KL per recursion | sentence cosine | MLM accuracy |",
            "|---|---|---|---|---|"]
    for init in ("random", "teacher", *args.after):
        cfg = load_run_config(args.config, [*args.overrides, f"student.init={init if init == 'random' else 'teacher'}"])
        teacher = load_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map)
        torch.manual_seed(cfg.train.seed)  # the student distill.py starts from
        student = (build_student(cfg, teacher) if init in ("random", "teacher")
                   else MiniAlbertForMaskedLM.from_pretrained(init)).eval()
        folders = [s.path for s in cfg.data.sources]
        held_out = [b for f in folders for b in iterate_split(f, "validation", batch_size=16, max_batches=args.batches)]
        agreement = measure_agreement(student, teacher, held_out)
        accuracy = mlm_accuracy(student, folders, teacher.config.vocab_size, args.batches)
        fmt = lambda xs: " / ".join(f"{x:.3f}" for x in xs)  # noqa: E731
        rows.append(f"| {init} | {fmt(agreement['hidden_cosine'])} | {fmt(agreement['attention_kl'])} | "
                    f"{agreement['sentence_cosine']:.3f} | {accuracy:.3f} |")
        print(rows[-1], flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
