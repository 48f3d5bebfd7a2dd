"""Benchmark the attention-KL term alone, forward + backward: maps-free (fused) against materialised maps.

    .venv/bin/python bench/bench_attention_kl.py                                   # CPU, b8, 12 heads, d 64
    .venv/bin/python bench/bench_attention_kl.py --seqs 128,256,512 --repeats 3
    .venv/bin/python bench/bench_attention_kl.py --device cuda --seqs 128,256,512,1024,2048,4096

One term = one recursion's pair: from the student's query/key heads (bf16 by default, requiring grad) and the
teacher's (no grad) to the scalar KL and the gradients of the student's heads. ``blockwise`` and ``attention`` are
``attention_kl.fused_attention_kl``'s two routes (the default on CPU and on CUDA); ``materialised`` builds both
(B, heads, L, L) maps as the models' eager attention does (scores, mask, softmax in the models' dtype) and calls
``losses.maps_attention_kl``. Median of ``--repeats`` timed runs after one warm-up; peak memory is the growth of the
peak RSS over the inputs (CPU; the process's other memory excluded) or of the peak CUDA allocation. On CPU the
bench first sets glibc's mmap threshold to 64 KiB (``mallopt``), so that every freed tensor goes back to the OS and
the RSS growth counts live tensors, not heap the allocator kept from an earlier path. A path
whose estimated peak exceeds ``--max-gib`` is skipped at that length (reported as such, with the estimate).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_distill import machine, peak_memory, reset_peak_memory, sync  # noqa: E402

from minialbert.attention_kl import TeacherAttention, fused_attention_kl  # noqa: E402
from minialbert.precision import DTYPES  # noqa: E402
from minialbert.losses import maps_attention_kl  # noqa: E402

# Bytes per map element the materialised term keeps at its peak (two maps in the models' dtype, the loss's fp32
# copies, log(s + eps), the products and their gradients), measured on CPU at L 512–1024 with bf16 inputs.
MATERIALISED_BYTES_PER_ELEMENT = 26


def return_freed_memory_to_the_os() -> bool:
    """glibc: serve allocations of 64 KiB and more by mmap, so that freeing them lowers the RSS."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 65536))  # M_MMAP_THRESHOLD
    except OSError:
        return False


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seqs", default="128,256,512,1024,2048")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--mode", default="default", choices=["default", "paper"])
    p.add_argument("--paths", default="blockwise,attention,materialised")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-gib", type=float, default=12.0, help="skip a path whose estimated peak is larger")
    p.add_argument("--device", default="auto")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    args.seqs = [int(s) for s in args.seqs.split(",")]
    args.paths = [s.strip() for s in args.paths.split(",") if s.strip()]
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def eager_maps(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, heads, L, L)
    scores = scores + (~key_mask).to(scores.dtype) * torch.finfo(scores.dtype).min
    return scores.softmax(-1)


def term(path: str, q_s, k_s, q_t, k_t, mask, mode: str) -> torch.Tensor:
    if path != "materialised":
        return fused_attention_kl(q_s, k_s, TeacherAttention(q_t, k_t), mask, mode, method=path)
    key_mask = mask[:, None, None, :].bool()
    with torch.no_grad():
        t = eager_maps(q_t, k_t, key_mask)
    return maps_attention_kl(eager_maps(q_s, k_s, key_mask), t, mask, mode)


def estimated_peak(path: str, b: int, h: int, seq: int, d: int) -> float:
    if path != "materialised":
        return 24 * b * h * seq * d * 4 + 2**22 * 4 * 8  # ~two dozen (B, heads, L, d) fp32 tensors and a block
    return MATERIALISED_BYTES_PER_ELEMENT * b * h * seq * seq


def run_once(path, inputs, mask, mode, device):
    q_s, k_s = inputs[0], inputs[1]
    q_s.grad = k_s.grad = None
    sync(device)
    t0 = time.perf_counter()
    value = term(path, *inputs, mask, mode)
    value.backward()
    sync(device)
    return time.perf_counter() - t0, value.item()


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    b, h, d = args.batch, args.heads, args.dim
    mmap_all = device.type == "cpu" and return_freed_memory_to_the_os()
    result = {"machine": machine(), "device": device.type, "torch": torch.__version__, "batch": b, "heads": h,
              "dim": d, "dtype": args.dtype, "mode": args.mode, "mmap_threshold_64k": mmap_all, "rows": []}
    print(f"{'L':>6} {'path':<13} {'fwd+bwd s':>10} {'peak MiB':>9} {'value':>10}")
    for seq in args.seqs:
        g = torch.Generator().manual_seed(seq)
        inputs = [(torch.randn(b, h, seq, d, generator=g) * 0.7).to(device, dtype) for _ in range(4)]
        inputs[0].requires_grad_()
        inputs[1].requires_grad_()
        mask = torch.ones(b, seq, dtype=torch.long, device=device)
        mask[-1, seq * 3 // 4:] = 0  # one padded row
        for path in args.paths:
            row = {"seq": seq, "path": path}
            est = estimated_peak(path, b, h, seq, d)
            if est > args.max_gib * 2**30:
                row.update(skipped=True, estimated_peak_bytes=est)
                result["rows"].append(row)
                print(f"{seq:>6} {path:<13} {'skipped':>10} {est / 2**20:>9.0f}  (estimated > --max-gib)")
                continue
            run_once(path, inputs, mask, args.mode, device)  # warm-up
            times, values, peaks = [], [], []
            for _ in range(args.repeats):
                sync(device)
                reset_peak_memory(device)  # CPU: the peak RSS starts again from the current RSS
                base = torch.cuda.memory_allocated(device) if device.type == "cuda" else peak_memory(device)
                t, v = run_once(path, inputs, mask, args.mode, device)
                times.append(t)
                values.append(v)
                peaks.append(peak_memory(device) - base)
            row.update(seconds=statistics.median(times), peak_bytes=max(peaks), value=values[-1])
            result["rows"].append(row)
            print(f"{seq:>6} {path:<13} {row['seconds']:>10.3f} {row['peak_bytes'] / 2**20:>9.0f} {values[-1]:>10.5f}")
        del inputs
    by = {(r["seq"], r["path"]): r for r in result["rows"] if not r.get("skipped")}
    for seq in args.seqs:
        m = by.get((seq, "materialised"))
        for path in (p for p in args.paths if p != "materialised"):
            f = by.get((seq, path))
            if f and m:
                print(f"L {seq}: {path} {m['seconds'] / f['seconds']:.2f}x faster than materialised, "
                      f"{f['peak_bytes'] / max(m['peak_bytes'], 1):.3f}x the memory")
    line = json.dumps(result)
    print(line)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
