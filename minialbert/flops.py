"""Model FLOPs of a distillation step, counted analytically, and the measured peak matmul rate of a device.

The training monitor divides the analytic count by the step time for ``perf/tflops`` and by
``measure_peak_flops`` for ``perf/mfu``. Only matrix products are counted (2·m·n·k each), as
``torch.utils.flop_counter`` does; ``bench/bench_distill.py`` checks the two agree. A step is:

- teacher forward (no grad): embeddings, ``teacher_layers_run`` layers, and the MLM head at the positions
  whose logits are distilled (the masked ones; every position in the original recipe);
- student forward + backward: the embedding projection, N recursions of the shared layer with two adapters each
  (and, with recursion deltas, each weight matrix's up·down formed once per recursion), the MLM head at the same
  positions. Backward costs twice the forward (input and weight gradients); the attention products too (eager
  attention's bmm backward, and flash attention's backward as the counter counts it: dQ, dK, dV, dP, without the
  recomputed scores);
- the maps-free attention KL (``attention_kl="fused"``, ``minialbert.attention_kl``): five attention calls per
  recursion, each as costly as one attention forward — one in the teacher (its LSE and entropy), two in the
  forward (T·K and S·K with LSE), two in the backward (the swapped column sums) — and, the student's attention
  now running through a flash kernel, the half forward its backward spends recomputing the scores (counted by
  ``torch.utils.flop_counter``; without a flash kernel, e.g. attention dropout on CPU, SDPA's math path does not
  recompute them and the count is that much high). The materialised KL is element-wise work and counts nothing.

Usage::

    from minialbert.flops import distillation_step_flops, measure_peak_flops
    flops = distillation_step_flops(teacher.config, student.config, batch=48, seq=256, masked_fraction=0.15)
    peak = measure_peak_flops(torch.bfloat16, "cuda")   # FLOP/s
    mfu = flops / step_seconds / peak
"""

from __future__ import annotations

import time

import torch


def _layer_forward_flops(tokens: int, seq: int, hidden: int, intermediate: int, gated: bool = False) -> int:
    """One transformer layer on ``tokens`` = B·L tokens: Q, K, V, output projections, FFN (``gated``: GeGLU, its
    up map twice as wide), attention."""
    projections = 2 * tokens * hidden * hidden * 4  # Q, K, V, dense
    ffn = 2 * tokens * hidden * intermediate * (3 if gated else 2)  # up (and gate) and down
    attention = 2 * tokens * seq * hidden * 2  # QK^T and PV over all heads: (B, h, L, d) x (B, h, d, L), ...
    return projections + ffn + attention


def _mlm_head_flops(positions: int, hidden: int, vocab: int) -> int:
    """transform (H -> H) and decoder (H -> V) at ``positions`` rows."""
    return 2 * positions * hidden * hidden + 2 * positions * hidden * vocab


def teacher_forward_flops(teacher_config, batch: int, seq: int, logits_positions: int,
                          teacher_layers_run: int | None = None) -> int:
    """A BERT teacher forward: ``teacher_layers_run`` layers (default all) and the MLM head at ``logits_positions``
    rows (0: no head). ``teacher_config``: a Hugging Face BertConfig (or anything with its field names)."""
    c = teacher_config
    layers = c.num_hidden_layers if teacher_layers_run is None else teacher_layers_run
    tokens = batch * seq
    gated = getattr(c, "model_type", None) == "modernbert"
    flops = layers * _layer_forward_flops(tokens, seq, c.hidden_size, c.intermediate_size, gated)
    return flops + _mlm_head_flops(logits_positions, c.hidden_size, c.vocab_size)


def student_forward_flops(student_config, batch: int, seq: int, logits_positions: int) -> int:
    """A MiniAlbertForMaskedLM forward with its MLM head at ``logits_positions`` rows."""
    c = student_config
    tokens = batch * seq
    h = c.hidden_size
    flops = 2 * tokens * c.embedding_size * h if c.embedding_size != h else 0  # embedding projection
    gated = c.layer_form == "modernbert"
    per_recursion = _layer_forward_flops(tokens, seq, h, c.intermediate_size, gated)
    if c.use_adapters:
        bottleneck = h // c.adapter_reduction_factor
        per_recursion += 2 * (2 * tokens * h * bottleneck * 2)  # two adapters, down and up
    if c.recursion_delta_rank:  # each weight matrix's up·down, formed once per forward
        per_recursion += 2 * c.recursion_delta_rank * (4 * h * h + (3 if gated else 2) * h * c.intermediate_size)
    flops += c.num_recursions * per_recursion
    return flops + _mlm_head_flops(logits_positions, h, c.vocab_size)


# Per recursion, in attention forwards: 1 teacher + 2 forward + 2 backward KL calls (see minialbert.attention_kl)
# and the half of the student attention's flash backward that recomputes the scores.
FUSED_KL_ATTENTION_CALLS = 5.5
# The scores route (bf16 on CPUs, short rows): 2 q·kᵀ products forward, the same 2 again and d_q, d_k backward —
# 6 products of 2·B·L²·H, 3 attention forwards — and the student attention's recomputed scores.
SCORES_KL_ATTENTION_CALLS = 3.5


def attention_kl_flops(student_config, batch: int, seq: int, attention_kl: str = "fused",
                       scores_route: bool = False) -> int:
    """The maps-free attention KL's products (as attention calls, QKᵀ and PV, 4·B·L²·H each) on its attention
    route, or on its scores route (``scores_route``: ``attention_kl.scores_route`` says the run takes it); 0 for
    the materialised KL."""
    if attention_kl == "materialised":
        return 0
    c = student_config
    calls = SCORES_KL_ATTENTION_CALLS if scores_route else FUSED_KL_ATTENTION_CALLS
    return round(c.num_recursions * calls * 4 * batch * seq * seq * c.hidden_size)


def distillation_step_flops(teacher_config, student_config, batch: int, seq: int, masked_fraction: float = 0.15,
                            teacher_layers_run: int | None = None, all_positions_logits: bool = False,
                            attention_kl: str = "fused", teacher_logits: bool = True,
                            student_logits: bool = True, scores_route: bool = False) -> int:
    """Model FLOPs of one distillation training step (teacher forward + student forward and backward).

    ``masked_fraction``: the share of the B·L positions whose logits are computed (the masked ones), or pass
    ``all_positions_logits=True`` for the original recipe's full-vocabulary logits at every position.
    ``teacher_layers_run``: layers the teacher runs (all when its logits are distilled; else up to the last
    mapped layer). ``attention_kl``: "fused" (the default step) or "materialised" (see ``attention_kl_flops``).
    ``teacher_logits``: False when the teacher's MLM head does not run (none, or the output term off);
    ``student_logits``: False when no term reads the student's logits (its MLM head does not run).
    ``scores_route``: the maps-free KL takes its scores route (``attention_kl_flops``).
    """
    if batch <= 0 or seq <= 0 or not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"batch={batch}, seq={seq}, masked_fraction={masked_fraction}: expected positive sizes and a fraction in [0, 1]")
    positions = batch * seq if all_positions_logits else round(masked_fraction * batch * seq)
    teacher = teacher_forward_flops(teacher_config, batch, seq, positions if teacher_logits else 0, teacher_layers_run)
    student = 3 * student_forward_flops(student_config, batch, seq, positions if student_logits else 0)
    return teacher + student + attention_kl_flops(student_config, batch, seq, attention_kl, scores_route)


_PROBE = 256  # side of the small product that estimates a slow dtype's rate before the real size is chosen


def run_step_flops(cfg, teacher_config, student_config, seq_len: int, teacher_has_mlm_head: bool,
                   on_cuda: bool = False) -> int:
    """Model FLOPs of one optimizer step of the run ``cfg`` (a resolved RunConfig): the one count that the plan
    (``--check``), the live MFU and the benchmark share, of what runs: the teacher's layers up to the last mapped one
    (all when its logits are distilled), each model's MLM head only when a loss term reads its logits
    (``LossConfig.student_logits_used``), the attention path chosen (and its route: ``on_cuda``, the device)."""
    from .attention_kl import scores_route
    from .teacher_families import layer_map_for, layers_run

    layer_map = layer_map_for(cfg.teacher.layer_map, teacher_config.num_hidden_layers, student_config.num_recursions)
    teacher_logits = cfg.loss.teacher_logits_used(teacher_has_mlm_head)
    return distillation_step_flops(
        teacher_config, student_config, cfg.train.global_batch_size, seq_len, cfg.data.mlm_probability,
        teacher_layers_run=layers_run(teacher_config, layer_map, teacher_logits),
        attention_kl=cfg.loss.attention_kl, teacher_logits=teacher_logits,
        student_logits=cfg.loss.student_logits_used(teacher_has_mlm_head),
        scores_route=cfg.train.precision == "bf16" and scores_route(
            torch.bfloat16, torch.device("cuda" if on_cuda else "cpu"), seq_len))


def _fitted_size(largest: int, probe_seconds: float, window: float) -> int:
    """The side of a square product that takes about an eighth of a measuring ``window``, at most ``largest``.

    A dtype the hardware only emulates (bf16 on an AVX2 CPU: ~0.25 GFLOP/s) would spend a minute on one 2048
    product; the measurement must stay a fraction of a second wherever it runs."""
    rate = 2 * _PROBE**3 / max(probe_seconds, 1e-9)
    side = int((rate * window / 8 / 2) ** (1 / 3)) // 64 * 64
    return max(64, min(largest, side))


def measure_peak_flops(dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                       size: int | None = None, seconds: float = 1.0, repeats: int = 3) -> float:
    """The best matmul rate (FLOP/s) of square ``size``×``size`` products of ``dtype`` on ``device``:
    the best of ``repeats`` windows of about ``seconds`` each (a machine-measured peak, not a datasheet one).
    Without ``size``: 8192 on CUDA; on a CPU the largest side up to 2048 whose product fits an eighth of a window.

    The operands come from a generator of its own: measuring never moves the global RNG streams (a resumed run
    restores them and must draw exactly what the uninterrupted run drew)."""
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(0)

    def operands(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(n, n, device=device, generator=gen).to(dtype),
                torch.randn(n, n, device=device, generator=gen).to(dtype))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    n = size
    if n is None and device.type == "cuda":
        n = 8192
    elif n is None:
        a, b = operands(_PROBE)
        a @ b
        start = time.perf_counter()
        a @ b
        n = _fitted_size(2048, time.perf_counter() - start, seconds)
    a, b = operands(n)
    for _ in range(3 if device.type == "cuda" else 1):
        a @ b
    sync()
    # CUDA queues products asynchronously: synchronise every 4; a CPU product has finished when it returns.
    every = 4 if device.type == "cuda" else 1
    best = 0.0
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            if count % every == 0:
                sync()
                elapsed = time.perf_counter() - start
                if elapsed >= seconds:
                    break
        best = max(best, 2 * n**3 * count / elapsed)
    return best
