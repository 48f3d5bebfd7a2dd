"""Benchmark one distillation training step: the original MiniALBERT recipe against the project's fast paths.

    .venv/bin/python bench/bench_distill.py                          # CPU, b8 s128, 8 timed steps each
    .venv/bin/python bench/bench_distill.py --recipes original,fast,maps --seq 512 --steps 2 --warmup 1
    .venv/bin/python bench/bench_distill.py --batch 64 --seq 256 --device cuda
    .venv/bin/python bench/bench_distill.py --recipes fast --steps 10

Recipes: ``original`` (the paper's code), ``fast`` (the project's step, attention KL without maps), ``maps`` (the
project's step with the materialised attention KL, the fast path before issue 14).

Paper shape: bert-base teacher (12 x 768, 12 heads, FFN 3072, vocab 30522, random weights), student 6 recursions
x 768, E 312, adapters r 16, 15% of positions masked. Each timed step is a whole training step (teacher forward,
student forward + backward, all losses, optimizer step); the recipes (see ``distill_recipes.py``) alternate step
by step after warm-up, and each reports the median of its steps. The first warm-up step of each recipe runs
under ``torch.utils.flop_counter`` to check the analytic FLOP count of ``minialbert.flops``. Prints a table, then
one JSON line (``speedup``, ``mfu_fast``, tokens/s, FLOPs, peak matmul rates, peak memory, machine load).
On CPU the process keeps freed memory for the next step (``minialbert.host_memory``, as ``distill.py`` does):
every recipe in it gains from that, the original too.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from distill_recipes import FastRecipe, OriginalRecipe, build_models, make_batch, paper_configs  # noqa: E402

from minialbert.compiled import compile_teacher, compiled_kernels  # noqa: E402
from minialbert.flops import distillation_step_flops, measure_peak_flops  # noqa: E402
from minialbert.host_memory import reuse_freed_memory  # noqa: E402
from minialbert.host_threads import restart_with_spinning_threads  # noqa: E402
from minialbert.attention_kl import scores_route  # noqa: E402
from minialbert.losses import EAGER  # noqa: E402

RECIPES = ("original", "fast", "maps")
DTYPE_OF = {"original": "fp32", "fast": "bf16", "maps": "bf16", "fast-eager": "bf16", "maps-eager": "bf16"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=8, help="timed steps per recipe (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per recipe first")
    p.add_argument("--recipes", default="original,fast")
    p.add_argument("--masked-fraction", type=float, default=0.15)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--no-flop-check", action="store_true", help="skip the torch.utils.flop_counter check")
    p.add_argument("--json-out", type=Path, help="also write the JSON line to this file")
    p.add_argument("--profile", action="store_true", help="after timing, profile one step of each recipe (op table)")
    p.add_argument("--compile", choices=("on", "off", "both"), default="on",
                   help="the fast and maps recipes' loss terms compiled and, on CPUs, their teacher's layers frozen "
                        "and compiled (train.compile=on), eager, or both side by side (fast-eager, maps-eager added)")
    p.add_argument("--memory", choices=("own", "shared"), default="own",
                   help="peak memory of each recipe measured in a process of its own (own: what a run of that "
                        "recipe needs; the default) or in this one, where every recipe's models and optimizer "
                        "states live side by side (shared: each peak also counts the other recipes' weights)")
    p.add_argument("--memory-of", choices=RECIPES + tuple(f"{r}-eager" for r in RECIPES if r != "original"),
                   help=argparse.SUPPRESS)  # the child process of --memory own: one recipe, one JSON line
    p.add_argument("--attention-dropout", type=float, default=None,
                   help="the student's attention dropout in the fast and maps recipes (default: the paper's 0.1, "
                        "as the original's)")
    args = p.parse_args(argv)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in args.recipes if r not in RECIPES]
    if bad or not args.recipes:
        p.error(f"--recipes: unknown {bad}; expected a comma-separated subset of {','.join(RECIPES)}")
    if args.batch <= 0 or args.seq <= 0 or args.steps <= 0 or args.warmup < 0:
        p.error("--batch, --seq, --steps must be positive and --warmup non-negative")
    if args.seq > 512:
        p.error(f"--seq {args.seq}: the teacher has 512 positions")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


# ----- memory -------------------------------------------------------------------------------------------------
def _proc_status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_memory(device: torch.device) -> None:
    """CUDA: the allocator's peak. CPU: the process's peak RSS from now, after glibc has returned the memory freed
    by earlier steps (the other recipes' included) to the system: without that, a step's peak RSS starts from
    whatever the previous step left cached, as CUDA's peak does not (it counts live tensors, never the cache)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _malloc_trim()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (peak RSS) to the current RSS
        except OSError:
            pass


def peak_memory(device: torch.device) -> int:
    """Bytes: peak CUDA allocation, or the process's peak RSS (every model of the run included) on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _proc_status("VmHWM")


def own_peak_memory(recipe, batches, warmup: int, device: torch.device) -> dict:
    """--memory-of: this process holds one recipe; its peak over one step after ``warmup`` steps."""
    for i in range(max(warmup, 1)):
        recipe.step(batches[i % 2])
    sync(device)
    reset_peak_memory(device)
    recipe.step(batches[0])
    sync(device)
    line = {"peak_memory_bytes": peak_memory(device)}
    print(json.dumps(line))
    return line


def memory_in_own_process(name: str, argv: list[str] | None, args: argparse.Namespace) -> int:
    """Peak memory of a step of recipe ``name`` in a fresh process that builds only it (--memory own)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv),
           "--memory-of", name, "--no-flop-check"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"memory of {name} in its own process failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or [''])[-1]}")
    return json.loads(lines[-1])["peak_memory_bytes"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- FLOP counting ------------------------------------------------------------------------------------------
def counted_flops(step) -> int:
    """FLOPs torch.utils.flop_counter sees in ``step()``; CPU flash attention is counted like the CUDA kernels."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def cpu_flash(query, key, value, *args, out_shape=None, **kwargs):  # shapes (B, h, L, d) each
            return sdpa_flop_count(query, key, value)

        custom[aten._scaled_dot_product_flash_attention_for_cpu] = cpu_flash
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        from torch.utils.flop_counter import sdpa_backward_flop_count

        def cpu_flash_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, query, key, value)

        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = cpu_flash_backward
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        step()
    return counter.get_total_flops()


def profile_step(step, device: torch.device, rows: int = 18) -> str:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def load_average() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    started = time.perf_counter()
    if device.type == "cpu":
        reuse_freed_memory()  # as minialbert/distill.py does (every recipe in this process gains from it)
    fast_dtype = torch.bfloat16
    if device.type == "cpu" and not (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()):
        print("warning: no native bf16 on this CPU; the fast recipe's bf16 matmuls are emulated", file=sys.stderr)

    teacher_cfg, student_cfg = paper_configs()
    teacher, student = build_models(teacher_cfg, student_cfg)
    fast_student = student
    if args.attention_dropout is not None:
        fast_student = copy.deepcopy(student)
        fast_student.config.attention_probs_dropout_prob = args.attention_dropout
        fast_student.minialbert.layer.attention.attention_dropout_p = args.attention_dropout
    kernels = compiled_kernels()

    def fast(attention_kl: str, compiled: bool):
        def build():
            recipe = FastRecipe.build(teacher, fast_student, fast_dtype, device=device, attention_kl=attention_kl,
                                      kernels=kernels if compiled else EAGER)
            if compiled:  # as distill.py does under train.compile: the teacher's layers compiled and frozen
                print(compile_teacher(recipe.teacher, args.batch, args.seq, True, attention_kl == "fused", device),
                      file=sys.stderr)
            return recipe
        return build

    builders = {"original": lambda: OriginalRecipe.build(teacher, student, device)}
    for name, attention_kl in (("fast", "fused"), ("maps", "materialised")):
        if args.compile in ("on", "both"):
            builders[name] = fast(attention_kl, True)
        if args.compile in ("off", "both"):
            builders[name if args.compile == "off" else f"{name}-eager"] = fast(attention_kl, False)
    recipes = {name: builders[name]() for r in args.recipes for name in (r, f"{r}-eager") if name in builders
               if args.memory_of in (None, name)}
    del teacher, student, fast_student
    # Two batches, alternated, so that the number of masked positions changes as in training.
    batches = [{k: v.to(device) for k, v in make_batch(teacher_cfg.vocab_size, args.batch, args.seq,
                                                         args.masked_fraction, seed=s).items()} for s in (1, 2)]
    masked = statistics.mean(int((b["labels"] != -100).sum()) for b in batches)
    tokens = args.batch * args.seq
    frac = masked / tokens

    analytic = {
        "original": distillation_step_flops(teacher_cfg, student_cfg, args.batch, args.seq, frac, all_positions_logits=True,
                                            attention_kl="materialised"),
        "fast": distillation_step_flops(teacher_cfg, student_cfg, args.batch, args.seq, frac,
                                        scores_route=scores_route(fast_dtype, device, args.seq)),
        "maps": distillation_step_flops(teacher_cfg, student_cfg, args.batch, args.seq, frac, attention_kl="materialised"),
    }
    analytic.update({f"{name}-eager": analytic[name] for name in ("fast", "maps")})
    if args.memory_of:
        return own_peak_memory(recipes[args.memory_of], batches, args.warmup, device)
    counted, losses = {}, {name: [] for name in recipes}
    for name, r in recipes.items():
        for i in range(args.warmup):
            if i == 0 and not args.no_flop_check:
                counted[name] = counted_flops(lambda: r.step(batches[0]))
            else:
                r.step(batches[i % 2])
        sync(device)

    peak_rates = {"bf16": measure_peak_flops(torch.bfloat16, device)}
    if "original" in recipes:
        peak_rates["fp32"] = measure_peak_flops(torch.float32, device, seconds=0.5, repeats=2)
    load_before = load_average()

    times = {name: [] for name in recipes}
    for i in range(args.steps):
        for name, r in recipes.items():
            sync(device)
            t0 = time.perf_counter()
            losses[name].append(r.step(batches[i % 2]))
            sync(device)
            times[name].append(time.perf_counter() - t0)
    load_after = load_average()
    # Peak memory in a step of its own, untimed: measuring it returns the freed memory to the system first
    # (reset_peak_memory), which a timed step would pay for in page faults that no training step has.
    mem = {}
    for name, r in recipes.items():
        reset_peak_memory(device)
        r.step(batches[0])
        sync(device)
        mem[name] = peak_memory(device)
    shared_mem = dict(mem)
    if args.memory == "own":
        mem = {name: memory_in_own_process(name, argv, args) for name in recipes}
    # Peak measured again after the timed steps: the best of both windows (other load only lowers it).
    peak_rates["bf16"] = max(peak_rates["bf16"], measure_peak_flops(torch.bfloat16, device))

    result: dict = {
        "machine": machine(), "device": device.type, "torch": torch.__version__, "compile": args.compile,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "attention_dropout": student_cfg.attention_probs_dropout_prob if args.attention_dropout is None
        else args.attention_dropout,
        "batch": args.batch, "seq": args.seq, "steps": args.steps, "masked_positions": masked,
        "loadavg_before": load_before, "loadavg_after": load_after, "memory": args.memory,
        "peak_flops_bf16": peak_rates["bf16"],
    }
    if "fp32" in peak_rates:
        result["peak_flops_fp32"] = peak_rates["fp32"]
    print(f"{'recipe':<11} {'step s':>8} {'tokens/s':>10} {'GFLOP/step':>11} {'counted':>9} {'TFLOP/s':>8} "
          f"{'MFU bf16':>9} {'peak MiB':>9} {'loss':>8}")
    for name in recipes:
        step_s = statistics.median(times[name])
        achieved = analytic[name] / step_s
        result[f"step_s_{name}"] = step_s
        result[f"tokens_per_s_{name}"] = tokens / step_s
        result[f"flops_per_step_{name}"] = analytic[name]
        if name in counted:
            result[f"flops_counted_{name}"] = counted[name]
            result[f"flop_check_rel_err_{name}"] = abs(counted[name] - analytic[name]) / counted[name]
        result[f"achieved_flops_{name}"] = achieved
        result[f"mfu_{name}"] = achieved / peak_rates["bf16"]
        result[f"mfu_{name}_own_dtype"] = achieved / peak_rates.get(DTYPE_OF[name], peak_rates["bf16"])
        result[f"peak_memory_bytes_{name}"] = mem[name]
        result[f"peak_memory_bytes_shared_{name}"] = shared_mem[name]
        result[f"final_loss_{name}"] = losses[name][-1]
        print(f"{name:<11} {step_s:>8.3f} {tokens / step_s:>10.1f} {analytic[name] / 1e9:>11.1f} "
              f"{counted.get(name, 0) / 1e9:>9.1f} {achieved / 1e12:>8.3f} {achieved / peak_rates['bf16']:>9.3f} "
              f"{mem[name] / 2**20:>9.0f} {losses[name][-1]:>8.3f}")
    if "original" in recipes and "fast" in recipes:
        result["speedup"] = result["tokens_per_s_fast"] / result["tokens_per_s_original"]
        goal_speedup, goal_mfu = (6.0, 0.35) if device.type == "cpu" else (10.0, 0.40)
        result["goal_speedup"], result["goal_mfu"] = goal_speedup, goal_mfu
        result["goals_met"] = result["speedup"] >= goal_speedup and result["mfu_fast"] >= goal_mfu
        print(f"speedup {result['speedup']:.2f}x (goal {goal_speedup}x), MFU fast {result['mfu_fast']:.3f} "
              f"(goal {goal_mfu}) of measured bf16 peak {peak_rates['bf16'] / 1e12:.2f} TFLOP/s")
    if "fast" in recipes and "fast-eager" in recipes:
        result["speedup_compiled"] = result["tokens_per_s_fast"] / result["tokens_per_s_fast-eager"]
        print(f"fast compiled vs eager: {result['speedup_compiled']:.2f}x tokens/s")
    if "fast" in recipes and "maps" in recipes:
        # The maps-free step against the materialised fast path (issue 14's goals at b8 s512 on CPU: >= 1.4x
        # tokens/s, <= 0.6x peak memory).
        result["speedup_fast_vs_maps"] = result["tokens_per_s_fast"] / result["tokens_per_s_maps"]
        result["memory_ratio_fast_vs_maps"] = result["peak_memory_bytes_fast"] / result["peak_memory_bytes_maps"]
        print(f"fast vs maps: {result['speedup_fast_vs_maps']:.2f}x tokens/s, "
              f"{result['memory_ratio_fast_vs_maps']:.2f}x peak memory")
    if args.profile:
        for name, r in recipes.items():
            print(f"--- profile of one {name} step (self time by op) ---")
            print(profile_step(lambda: r.step(batches[0]), device))
    result["wall_s"] = time.perf_counter() - started
    line = json.dumps(result)
    print(line)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(line + "\n")
    return result


if __name__ == "__main__":
    restart_with_spinning_threads()  # as minialbert/distill.py does: OpenMP workers spin on a CPU of its own
    main()
