"""``train.compile``: the loss terms' element-wise work through ``torch.compile`` (Inductor: C++ kernels on CPUs,
Triton on GPUs) — the hidden-state cosine of every recursion (casts, products, norms, the masked sum), the
attention term's row math on its score blocks (``attention_kl``'s ``scores`` route: log-softmax of both models'
rows and their KL forward, g (s - t) backward) and, where a term reads logits, the (M, V) log-softmax, KL and
cross-entropy — each fused into a few passes over memory, forward and backward.

On CPUs, the frozen teacher's layer loop too (``compile_teacher``): for inference, its weights frozen into the
kernels, its matrix products autotuned (Inductor's AMX GEMM kernels with pre-packed weights, bias and GELU in their
epilogues).

What is compiled is what measured faster (docs/performance.md, "The step on bf16 hardware"; Intel Xeon with
AMX, bf16, b8 s128): the hidden cosine 4.3 -> 1.0 ms a call, the logit terms 63 -> 33 ms a step, the attention
term's row math 23 -> 12 ms a recursion, the bert-base teacher 264-316 -> 154-165 ms a step. The student's
encoder is not: compiled whole it measured 0.84x (attention dropout's blockwise kernel breaks the graph into
pieces that recompile) and 0.96x without attention dropout, and its feed-forward block alone with autotuned
products 1.08x: unlike the teacher's, its weights change every step, so nothing is pre-packed.

``auto``: on where it pays for its compile time (about 10 s a rank, once; seconds when Inductor's on-disk cache
has the kernels): bf16 runs on a device with native bf16 (a GPU, a CPU with AMX or AVX512-BF16), whose matrix
products are fast enough that the element-wise work is a large share of the step; off for fp32 and fp16 runs
and for emulated bf16 (an AVX2 CPU), all bound by their matrix products. The teacher (20-45 s a rank, autotuning
included, every start: frozen weights are not cached) only in runs of ``TEACHER_MIN_STEPS`` or more. ``on``
compiles everything wherever asked (tests use it to check the compiled terms on any CPU); ``off`` nothing.

The kernels are compiled at start-up with inputs of the run's shapes (forward and backward): the time is reported
in one line, and a failure (no C++ compiler, an unsupported device) leaves the run eager with one line — never a
lost run. The kernels are pure functions of their inputs: they draw no random numbers and hold no state, so
checkpoints, resume and every ZeRO stage are as in eager runs.
"""

from __future__ import annotations

import sys
import time

import torch

from . import dist
from .precision import bf16_supported
from .attention_kl import ScoresKernels, TeacherAttention, fused_attention_kl, scores_route, scores_row_kl, scores_row_kl_grad
from .losses import EAGER, LossKernels, hidden_cosine_sum, mlm_cross_entropy_sum, output_kl_sum

SETTINGS = ("auto", "on", "off")


def compile_wanted(setting: str, precision: str, native_bf16: bool) -> tuple[bool, str]:
    """(compile?, why) for ``train.compile`` = ``setting`` in a run of ``precision`` (resolved, not 'auto') on a
    device with (``native_bf16``) or without bf16 units."""
    if setting != "auto":
        return setting == "on", f"train.compile={setting}"
    if precision != "bf16":
        return False, f"auto: off for {precision} (the step is bound by its matrix products)"
    if not native_bf16:
        return False, "auto: off (no native bf16 on this device: its emulated matrix products dominate)"
    return True, "auto: on for native bf16 (fused element-wise loss terms)"


def compiled_kernels() -> LossKernels:
    """The loss terms through ``torch.compile``; the logits' row count M changes every batch (dynamic)."""
    return LossKernels(hidden_cosine_sum=torch.compile(hidden_cosine_sum),
                       output_kl_sum=torch.compile(output_kl_sum, dynamic=True),
                       mlm_cross_entropy_sum=torch.compile(mlm_cross_entropy_sum, dynamic=True),
                       attention_scores=ScoresKernels(torch.compile(scores_row_kl), torch.compile(scores_row_kl_grad)))


def _probe(kernels: LossKernels, micro: int, seq_len: int, hidden: int, heads: int, vocab: int,
           logits: tuple[bool, bool], temperature: float, dtype: torch.dtype, device: torch.device) -> None:
    """Forward and backward of each kernel the run calls, on inputs of its shapes (a generator of its own: the
    run's random streams are untouched)."""
    g = torch.Generator(device=device).manual_seed(0)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device).to(dtype).requires_grad_()

    mask = torch.ones(micro, seq_len, dtype=torch.long, device=device)
    terms = [kernels.hidden_cosine_sum(leaf(micro, seq_len, hidden), leaf(micro, seq_len, hidden), mask)]
    if scores_route(dtype, device, seq_len):  # the attention term's row math, a recursion's query and key heads
        q, k = leaf(micro, heads, seq_len, hidden // heads), leaf(micro, heads, seq_len, hidden // heads)
        teacher = TeacherAttention(q.detach(), k.detach().flip(2))
        terms.append(fused_attention_kl(q, k, teacher, mask, "default", kernels=kernels.attention_scores))
    rows = max(2, micro * seq_len // 7)
    student_logits, teacher_logits = logits
    if student_logits:
        labels = torch.randint(0, vocab, (rows,), generator=g, device=device)
        terms.append(kernels.mlm_cross_entropy_sum(leaf(rows, vocab), labels))
    if teacher_logits:
        terms.append(kernels.output_kl_sum(leaf(rows, vocab), leaf(rows, vocab).detach(), temperature))
    torch.stack(terms).sum().backward()


def loss_kernels(setting: str, precision: str, dtype: torch.dtype, device: torch.device, micro: int, seq_len: int,
                 hidden: int, heads: int, vocab: int, logits: tuple[bool, bool], temperature: float) -> LossKernels:
    """The run's loss kernels: compiled (and proven on inputs of the run's shapes) when ``setting`` asks for it,
    else eager. ``logits``: whether the student's / the teacher's logits are read. Says what it did in one line
    (rank 0); every rank ends with the same choice."""
    wanted, why = compile_wanted(setting, precision, bf16_supported(device))
    if not wanted:
        dist.print0(f"train.compile: off ({why})")
        return EAGER
    start, failure = time.perf_counter(), None
    kernels = compiled_kernels()
    try:
        _probe(kernels, micro, seq_len, hidden, heads, vocab, logits, temperature, dtype, device)
    except Exception as err:  # noqa: BLE001 -- any compiler failure: the run goes on eager
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        failure = f"{type(err).__name__}: {reason}"
    if dist.all_reduce_sum(torch.tensor([float(failure is not None)])).item():  # eager everywhere if any failed
        dist.print0(f"train.compile: compiling failed ({failure or 'on another rank'}); the run continues eager",
                    file=sys.stderr)
        return EAGER
    dist.print0(f"train.compile: on ({why}); the loss terms compiled in {time.perf_counter() - start:.1f} s "
                f"(start-up, outside the steps' tokens/s)")
    return kernels


# ----- the frozen teacher -------------------------------------------------------------------------------------------
class FrozenLayers:
    """A teacher's layer loop through ``torch.compile`` for inference, its weights frozen into the kernels
    (Inductor's ``freezing``: weights pre-packed for the matrix units, bias and GELU fused into the products'
    epilogues) and, with ``cpp_gemm``, its matrix products Inductor's own C++ GEMM kernels (``max-autotune`` with
    the CPP backend alone: on AMX, tiles on the matrix units); without, ATen's. Either way one candidate a product,
    so nothing is chosen by timing: every process — a resumed run, each rank — gets the same kernels and the same
    numbers. The teacher never trains, so freezing its weights is exact; a new input shape compiles again."""

    def __init__(self, eager, cpp_gemm: bool = True):
        self.eager = eager
        self.compiled = torch.compile(eager, mode="max-autotune-no-cudagraphs" if cpp_gemm else None)
        self.settings = dict(freezing=True, **(dict(max_autotune_gemm_backends="CPP", autotune_num_choices_displayed=0,
                                                     max_autotune_report_choices_stats=False) if cpp_gemm else {}))

    def __call__(self, *args):
        with torch._inductor.config.patch(**self.settings):
            return self.compiled(*args)


def _teacher_probe(teacher, micro: int, seq_len: int, logits: bool, query_key: bool, device: torch.device) -> None:
    """One batch of the run's shapes and outputs through the compiled layers (compiling them), checked against
    eager: the mapped layers' hidden states agree within bf16 rounding, or this raises."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, min(teacher.config.vocab_size, 1000), (micro, seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    positions = torch.arange(0, ids.numel(), 7, device=device) if logits else None

    def run():
        return teacher(ids, mask, torch.zeros_like(ids), logits_positions=positions, output_attentions=not query_key,
                       output_query_key=query_key)

    compiled = run()
    layers, teacher.run_layers = teacher.run_layers, teacher.run_layers.eager
    try:
        eager = run()
    finally:
        teacher.run_layers = layers
    for got, want in zip(compiled.hidden_states, eager.hidden_states):
        err = (got.float() - want.float()).abs().max().item() / max(want.float().abs().max().item(), 1e-6)
        if not err <= 0.05:
            raise RuntimeError(f"the compiled teacher's hidden states differ from eager's by {err:.3f} (relative)")


FROZEN_MAX_LEN = 256
"""The teacher is compiled for rows up to this long, with the maps-free attention term: at b8 s512 its products
(4,096 rows) ran as fast eager (884 / 866 vs 955 / 857 ms) while the packed weights cost 220 MB more (bert-base
bf16); with the materialised maps the compiled teacher's step measured 2.5x slower at s512."""

TEACHER_MIN_STEPS = 2000
"""``auto`` compiles the teacher in runs of at least this many steps: its compile (20-45 s a rank, autotuning
included) is repaid by 14 ms a step (cpu.yaml's 3-layer MiniLM, b16 s128, one thread) to 110 ms (bert-base, b8
s128, two threads) on the AMX host; shorter runs (cpu.yaml's 400 steps) would lose more than they gain."""


def teacher_compile_wanted(setting: str, max_steps: int) -> tuple[bool, str]:
    """(compile the teacher?, why), in a run whose loss terms are compiled (``train.compile`` on or auto-on)."""
    if setting == "on":
        return True, "train.compile=on"
    if max_steps >= TEACHER_MIN_STEPS:
        return True, f"auto: {max_steps} steps repay its compile"
    return False, f"auto: {max_steps} steps < {TEACHER_MIN_STEPS} would not repay its compile"


def compile_teacher(teacher, micro: int, seq_len: int, logits: bool, query_key: bool, device: torch.device) -> str:
    """The teacher's layer loop compiled and frozen (``FrozenLayers``) on CPUs, where its family runs layer by layer,
    the attention term is maps-free (``query_key``) and rows are at most ``FROZEN_MAX_LEN``; proven on a batch of
    the run's shapes (``logits``: the run reads its MLM logits) rank by rank, and kept only where every rank
    compiled it. Returns the line to print."""
    if device.type != "cpu":
        return "the teacher eager (compiled and frozen on CPUs only: measured there)"
    if teacher.family.runner == "outputs":
        return "the teacher eager (its family runs the model's own forward)"
    if not query_key or seq_len > FROZEN_MAX_LEN:
        return (f"the teacher eager (compiled and frozen where it measured faster: the maps-free attention term, "
                f"rows of at most {FROZEN_MAX_LEN})")
    start, eager = time.perf_counter(), teacher.run_layers
    # The C++ GEMM kernels first where they were measured (AMX on every rank: each rank then makes the same number
    # of all-reduces below, on a job of mixed CPUs too); where a product has none, and elsewhere, ATen's.
    no_amx = dist.all_reduce_sum(torch.tensor([float(not torch.cpu._is_amx_tile_supported())])).item()
    for cpp_gemm in (False,) if no_amx else (True, False):
        failure = None
        teacher.run_layers = FrozenLayers(eager, cpp_gemm)
        try:
            with torch.random.fork_rng(devices=[]):  # autotuning's random inputs leave the run's streams untouched
                _teacher_probe(teacher, micro, seq_len, logits, query_key, device)
        except Exception as err:  # noqa: BLE001 -- any compiler failure: the next way, then eager
            failure = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        if not dist.all_reduce_sum(torch.tensor([float(failure is not None)])).item():
            products = "C++ GEMM kernels" if cpp_gemm else "ATen products"
            return f"the teacher compiled and frozen ({products}) in {time.perf_counter() - start:.1f} s"
    teacher.run_layers = eager
    return f"the teacher eager (compiling it failed: {failure or 'on another rank'})"
