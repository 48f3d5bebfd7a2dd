"""Time the step that ``minialbert/distill.py`` runs: ``minialbert.step.train_step`` on a real DeepSpeed engine
(``minialbert.engine.initialize`` with ``configs/ds/zero2.json``: ZeRO-2, bf16 on a GPU), one rank, for each
attention path (``fused``: maps-free, the default; ``materialised``: the (B, heads, L, L) maps) at each length.

    .venv/bin/python bench/bench_engine_step.py --device cuda                 # b64 at L 128, 256, 512
    .venv/bin/python bench/bench_engine_step.py --device cuda --batch 8 --seqs 512
    DS_ACCELERATOR=cpu .venv/bin/python bench/bench_engine_step.py --tiny   # a tiny model on the CPU (a smoke run)
    .venv/bin/python bench/bench_engine_step.py --device cuda --compile off   # the loss terms eager (A/B)

Paper shape (``bench/distill_recipes.py``): a random bert-base teacher (12 x 768) and a 6-recursion 768-wide student,
E 312, adapters r 16. The two paths' engines live side by side and alternate step by step after warm-up; each
reports the median step. FLOPs per step: ``minialbert.flops.run_step_flops`` (the count the plan and the live MFU
use); MFU against the matmul peak measured in the same run. Peak memory: CUDA's allocator peak over that path's
steps (both engines' weights and optimizer states included), or the process's peak RSS on a CPU. Prints one
markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_distill import machine, peak_memory, reset_peak_memory, sync  # noqa: E402
from distill_recipes import build_models, make_batch, paper_configs  # noqa: E402

from minialbert import dist, engine as engine_setup  # noqa: E402
from minialbert.compiled import SETTINGS, loss_kernels  # noqa: E402
from minialbert.config import RunConfig  # noqa: E402
from minialbert.flops import measure_peak_flops, run_step_flops  # noqa: E402
from minialbert.precision import DTYPES, resolve_precision  # noqa: E402
from minialbert.losses import EAGER  # noqa: E402
from minialbert.step import train_step  # noqa: E402
from minialbert.teacher import Teacher  # noqa: E402
from minialbert.teacher_families import uniform_layer_map  # noqa: E402

PATHS = ("fused", "materialised")
DS_JSON = Path(__file__).resolve().parents[1] / "configs" / "ds" / "zero2.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seqs", default="128,256,512", help="comma-separated sequence lengths (at most 512)")
    p.add_argument("--paths", default=",".join(PATHS), help="attention paths: fused, materialised")
    p.add_argument("--steps", type=int, default=6, help="timed steps per path and length (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per path and length first")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 where the device has it natively, else fp32")
    p.add_argument("--deepspeed", type=Path, default=DS_JSON, help="DeepSpeed JSON (default configs/ds/zero2.json)")
    p.add_argument("--compile", choices=SETTINGS, default="auto",
                   help="train.compile for the loss terms (auto: on for bf16 on a device with native bf16)")
    p.add_argument("--tiny", action="store_true", help="a tiny teacher and student (checks the script, times nothing real)")
    p.add_argument("--json-out", type=Path, help="also write the JSON line to this file")
    args = p.parse_args(argv)
    args.seqs = [int(s) for s in args.seqs.split(",") if s.strip()]
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    if not set(args.paths) <= set(PATHS) or not args.paths:
        p.error(f"--paths {','.join(args.paths)}: expected a comma-separated subset of {','.join(PATHS)}")
    if args.batch <= 0 or args.steps <= 0 or args.warmup < 0 or not args.seqs or min(args.seqs) <= 0:
        p.error("--batch, --steps and every --seqs length must be positive, --warmup non-negative")
    if max(args.seqs) > 512:
        p.error(f"--seqs {max(args.seqs)}: the teacher has 512 positions")
    return args


def model_configs(tiny: bool):
    teacher, student = paper_configs()
    if tiny:
        teacher.update(dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                            vocab_size=1000))
        student.update(dict(hidden_size=64, num_attention_heads=4, intermediate_size=128, embedding_size=32,
                            num_recursions=2, vocab_size=1000))
    return teacher, student


def run_config(batch: int, precision: str, path: str) -> RunConfig:
    cfg = RunConfig()
    cfg.train.global_batch_size = cfg.train.micro_batch_size = batch
    cfg.train.precision = precision
    cfg.loss.attention_kl = path
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    ctx = dist.init_distributed()  # one rank: DeepSpeed's engine wants a process group
    device = ctx.device
    if device.type != args.device:
        raise SystemExit(f"--device {args.device}: DeepSpeed's accelerator is {device.type} (set DS_ACCELERATOR)")
    precision = resolve_precision(args.precision, device)
    dtype = DTYPES[precision]
    teacher_cfg, student_cfg = model_configs(args.tiny)
    hf_teacher, student = build_models(teacher_cfg, student_cfg)
    teacher = Teacher(hf_teacher, uniform_layer_map(teacher_cfg.num_hidden_layers, student_cfg.num_recursions))
    teacher = teacher.to(device, dtype)
    engines, cfgs = {}, {}
    for path in args.paths:
        cfgs[path] = run_config(args.batch, precision, path)
        ds_config = engine_setup.build_ds_config(cfgs[path], args.deepspeed, 1, on_cuda=device.type == "cuda")
        engines[path] = engine_setup.initialize(copy.deepcopy(student), ds_config, cfgs[path].optim, max_steps=10**6)
    cfg = cfgs[args.paths[0]]
    kernels = loss_kernels(args.compile, precision, dtype, device, args.batch, max(args.seqs),
                           student_cfg.hidden_size, student_cfg.num_attention_heads, teacher_cfg.vocab_size,
                           (True, True), cfg.loss.temperature)
    peak = measure_peak_flops(dtype, device)
    rows, results = [], []
    for seq in args.seqs:
        times = {p: [] for p in args.paths}
        memory = {p: 0 for p in args.paths}
        for i in range(args.warmup + args.steps):
            for path in args.paths:
                batch = make_batch(teacher_cfg.vocab_size, args.batch, seq, seed=i)
                reset_peak_memory(device)
                sync(device)
                t0 = time.perf_counter()
                train_step(engines[path], teacher, iter([batch]), 1, cfgs[path].loss, ctx, kernels)
                sync(device)
                if i >= args.warmup:
                    times[path].append(time.perf_counter() - t0)
                    memory[path] = max(memory[path], peak_memory(device))
        for path in args.paths:
            step_s = statistics.median(times[path])
            flops = run_step_flops(cfgs[path], teacher_cfg, student_cfg, seq, teacher_has_mlm_head=True)
            result = {"seq": seq, "path": path, "step_s": step_s, "tokens_per_s": args.batch * seq / step_s,
                      "flops_per_step": flops, "mfu": flops / step_s / peak, "peak_memory_mib": memory[path] / 2**20}
            results.append(result)
        by_path = {r["path"]: r for r in results if r["seq"] == seq}
        for path in args.paths:
            r = by_path[path]
            ratio = ""
            if path == "fused" and "materialised" in by_path:
                m = by_path["materialised"]
                ratio = f"{r['tokens_per_s'] / m['tokens_per_s']:.2f}x tokens/s, {r['peak_memory_mib'] / m['peak_memory_mib']:.2f}x memory"
            rows.append(f"| b{args.batch} s{seq} | {path} | {r['step_s']:.3f} | {r['tokens_per_s']:,.0f} | "
                        f"{r['flops_per_step'] / 1e9:,.1f} | {r['mfu']:.3f} | {r['peak_memory_mib']:,.0f} | {ratio} |")
    print(f"DeepSpeed engine step (train_step), {machine()}, {precision}, ZeRO config {args.deepspeed.name}, "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s measured, "
          f"train.compile={args.compile}")
    print("| shape | attention path | step s | tokens/s | GFLOP/step | MFU | peak MiB | fused vs materialised |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    line = json.dumps({"bench": "engine_step", "machine": machine(), "precision": precision, "batch": args.batch,
                       "peak_flops": peak, "tiny": args.tiny,
                       "compile": args.compile, "compiled": kernels is not EAGER, "results": results})
    print(line)
    if args.json_out:
        args.json_out.write_text(line + "\n")
    for e in engines.values():
        e.destroy()
    dist.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
