"""Large batches on CPU: the embedded default at global batch 32 against 16x that (accumulation), on the same tokens,
AdamW with its learning rate scaled against LAMB. Each run is a real 2-rank ``deepspeed`` distillation.

    python -m minialbert.demo --only data                                  # the demo shards, once
    .venv/bin/python bench/large_batch_study.py --sequences 4096          # -> runs/large_batch_study/*

Runs (the embedded default otherwise: MiniLM teacher, 3 recursions, precision auto, ZeRO-2, micro-batch 16 per
rank): ``adamw-b32`` (lr 1e-3, the default's), ``adamw-b512`` (lr scaled by sqrt(16): 4e-3), ``lamb-b512`` (lr
4e-3 and the LAMB paper's decay 0.01, eps 1e-6), ``adamw-b512-linear`` and ``lamb-b512-linear`` (lr x16 = 1.6e-2,
the linear rule). Warm-up: the first 10 % of the tokens in every run. Prints a table: the training loss over the
last eighth of the sequences (the same sequences in every run: the stream's order does not depend on the batch) and
the wall time; one JSON line with everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from minialbert.dist import free_port
from minialbert.run_dir import RunDir

REPO = Path(__file__).resolve().parents[1]
RUNS = {
    "adamw-b32": (32, ["optim.lr=1e-3"]),
    "adamw-b512": (512, ["optim.lr=4e-3"]),
    "lamb-b512": (512, ["optim.name=lamb", "optim.lr=4e-3", "optim.weight_decay=0.01", "optim.eps=1e-6"]),
    "adamw-b512-linear": (512, ["optim.lr=1.6e-2"]),
    "lamb-b512-linear": (512, ["optim.name=lamb", "optim.lr=1.6e-2", "optim.weight_decay=0.01", "optim.eps=1e-6"]),
}


def run(name: str, batch: int, extra: list[str], sequences: int, out: Path, base: list[str]) -> dict:
    steps = sequences // batch
    run_dir = out / name
    port = free_port()  # other runs on the machine may hold DeepSpeed's default port
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(port),
           "minialbert/distill.py",
           "--deepspeed", "configs/ds/zero2.json", "--run-dir", str(run_dir), "--no-resume", *base,
           f"train.global_batch_size={batch}", "train.micro_batch_size=16", f"train.max_steps={steps}",
           f"optim.warmup_steps={max(1, steps // 10)}", "checkpoint.every_steps=0", "train.peak_tflops=1.0", *extra]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    with open(f"{run_dir}.log", "w") as log:
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{name}: exit {done.returncode}, see {run_dir}.log")
    records = RunDir(run_dir).read_metrics()
    tail = [r for r in records if r["step"] * batch > sequences * 7 // 8]
    return {"run": name, "batch": batch, "steps": steps, "tokens": records[-1]["tokens"],
            "loss_last_eighth": sum(r["loss"] for r in tail) / len(tail), "loss_first": records[0]["loss"],
            "wall_s": round(wall, 1), "load_avg": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=4096, help="sequences per run (a multiple of 512)")
    p.add_argument("--runs", default=",".join(RUNS), help="comma-separated subset of " + ", ".join(RUNS))
    p.add_argument("--out", default="runs/large_batch_study")
    p.add_argument("--config", help="a run config instead of the embedded default (e.g. configs/distill/tiny.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value for every run (e.g. teacher.path=...)")
    args = p.parse_args()
    base = (["--config", args.config] if args.config else []) + args.overrides
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    rows = [run(name, *RUNS[name], args.sequences, out, base) for name in args.runs.split(",")]
    print(f"{'run':<20} {'batch':>5} {'steps':>5} {'tokens':>9} {'loss (last 1/8)':>16} {'wall s':>7} {'load':>5}")
    for r in rows:
        print(f"{r['run']:<20} {r['batch']:>5} {r['steps']:>5} {r['tokens']:>9,} {r['loss_last_eighth']:>16.4f} "
              f"{r['wall_s']:>7.1f} {r['load_avg']:>5.1f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
