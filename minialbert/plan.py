"""What a run will do, worked out without running it: the student's shape, the batch arithmetic for a world size,
tokens and FLOPs per step and in all, an estimate of per-GPU memory, the teacher→recursion layer map.

    python -m minialbert.distill --config configs/distill/general.yaml --check --world-size 8 [overrides]
    deepspeed --num_gpus 8 minialbert/distill.py --config configs/distill/general.yaml --check   # the launcher's N

Worked out from the run's one resolution (``resolved_run``: the teacher's ``config.json`` and the shards'
``manifest.json`` where they are present, no weights, no rows); what depends on a missing one is reported as
unknown, with the path that would tell. No torch.distributed, no DeepSpeed engine, nothing written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import RunConfig, offloads_optimizer
from .configuration_minialbert import MiniAlbertConfig
from .resolved_run import ResolvedRun

GiB = 2**30


@dataclass
class Plan:
    world_size: int
    micro_batch_size: int
    accumulation: int
    global_batch_size: int
    max_steps: int
    zero_stage: int
    offload: bool
    precision: str
    loss_mode: str
    optimizer: str = ""
    """The optimizer and its settings, as one line."""
    seq_len: int | None = None
    layer_map: list[int] | None = None
    teacher_family: str | None = None
    """The teacher's family and its attention path (``teacher.describe_family``)."""
    flops_per_step: float | None = None
    student_params: int | None = None
    teacher_params: int | None = None
    frozen_student_params: int = 0
    memory: dict[str, float] = field(default_factory=dict)
    """Estimated bytes per GPU, by part."""
    unknown: list[str] = field(default_factory=list)
    """What could not be worked out here, and why."""

    @property
    def tokens_per_step(self) -> int | None:
        return None if self.seq_len is None else self.global_batch_size * self.seq_len

    def lines(self) -> list[str]:
        def num(v, unit=""):
            return "unknown" if v is None else f"{v:,.0f}{unit}"

        total_tokens = None if self.tokens_per_step is None else self.tokens_per_step * self.max_steps
        out = [
            f"world size {self.world_size}: micro-batch {self.micro_batch_size} per rank x accumulation "
            f"{self.accumulation} x {self.world_size} ranks = global batch {self.global_batch_size}",
            f"precision {self.precision}, ZeRO stage {self.zero_stage}{' + CPU optimizer offload' if self.offload else ''}, "
            f"loss mode {self.loss_mode}",
            f"optimizer {self.optimizer}",
            f"sequence length {num(self.seq_len)}; tokens per step {num(self.tokens_per_step)}; "
            f"steps {self.max_steps:,}; tokens in all {num(total_tokens)}",
        ]
        if self.flops_per_step is not None:
            out.append(f"FLOPs per step {self.flops_per_step:.3e}; in all {self.flops_per_step * self.max_steps:.3e}")
        else:
            out.append("FLOPs per step unknown")
        if self.teacher_family is not None:
            out.append(self.teacher_family)
        if self.layer_map is not None:
            out.append("layer map (teacher layer -> recursion): "
                       + ", ".join(f"{t}->{i + 1}" for i, t in enumerate(self.layer_map)))
        if self.student_params is not None:
            frozen = (f" + {self.frozen_student_params:,} frozen (its MLM head: no loss term reads its logits)"
                      if self.frozen_student_params else "")
            out.append(f"parameters: student {self.student_params:,} (trained){frozen}, "
                       f"teacher {self.teacher_params:,} (frozen)")
        if self.memory:
            parts = ", ".join(f"{k} {v / GiB:.2f}" for k, v in self.memory.items())
            out.append(f"memory per GPU (estimate, GiB): {sum(self.memory.values()) / GiB:.2f} = {parts}")
        out += [f"unknown: {u}" for u in self.unknown]
        return out


def optimizer_line(cfg: RunConfig) -> str:
    o = cfg.optim
    line = (f"{o.name}: lr {o.lr:g}, warm-up {o.warmup_steps:,} steps then linear decay, betas {o.betas[0]:g}/"
            f"{o.betas[1]:g}, eps {o.eps:g}, weight decay {o.weight_decay:g}, gradient clipping {o.max_grad_norm:g}")
    if o.name == "lamb":
        line += (f", trust ratio per tensor capped at {o.max_trust_ratio:g}" if o.max_trust_ratio
                 else ", trust ratio per tensor (no cap)")
    return line


def model_state_bytes(params: int, precision: str, stage: int, offload: bool, world: int) -> dict[str, float]:
    """Per-GPU bytes of the trained model's states under ZeRO (Rajbhandari et al. 2020): 16-bit weights and
    gradients plus fp32 master weights and Adam moments (12 bytes) in mixed precision, partitioned by stage
    (1: optimizer states, 2: + gradients, 3: + weights); gradients are accumulated in fp32 (partitioned)."""
    if precision == "fp32":
        weights, grads, optimizer, accum = 4.0, 4.0, 8.0, 0.0
    else:
        weights, grads, optimizer, accum = 2.0, 2.0, 12.0, 4.0
    return {
        "weights": params * weights / (world if stage >= 3 else 1),
        "gradients": params * (grads / (world if stage >= 2 else 1) + accum / world),
        "optimizer": 0.0 if offload else params * optimizer / world,
    }


def activation_bytes(student: MiniAlbertConfig, micro: int, seq: int, mlm_probability: float, maps_kept: int,
                     logit_copies: int = 2) -> float:
    """Activations of one micro-batch: the per-layer estimate of Korthikanti et al. 2022 (16-bit, no
    recomputation: s·b·h·34 + 5·a·s²·b bytes) for each recursion, the teacher's ``maps_kept`` attention maps for
    the loss, and fp32 logits over the vocabulary at the masked positions (``logit_copies``: 2 when both models'
    run, 1, or 0 when no term reads logits)."""
    h, a = student.hidden_size, student.num_attention_heads
    per_layer = seq * micro * h * 34 + 5 * a * seq * seq * micro
    teacher_maps = maps_kept * micro * a * seq * seq * 2
    logits = mlm_probability * micro * seq * student.vocab_size * 4 * 1.5 * logit_copies
    return student.num_recursions * per_layer + teacher_maps + logits


def make_plan(run: ResolvedRun) -> Plan:
    cfg, world_size = run.cfg, run.world_size
    plan = Plan(
        world_size=world_size, micro_batch_size=cfg.train.micro_batch_size, accumulation=run.accumulation,
        global_batch_size=cfg.train.global_batch_size, max_steps=cfg.train.max_steps,
        zero_stage=int(run.ds_config.get("zero_optimization", {}).get("stage", 0)), precision=cfg.train.precision,
        loss_mode=cfg.loss.mode, offload=offloads_optimizer(run.ds_config), seq_len=run.seq_len,
        optimizer=optimizer_line(cfg), flops_per_step=run.flops_per_step,
    )
    if plan.seq_len is None:
        plan.unknown.append("sequence length, tokens and FLOPs: no manifest.json in "
                            + ", ".join(s.path for s in cfg.data.sources))
    if run.teacher is None:
        plan.unknown.append(f"layer map, parameters, FLOPs and memory: no teacher config at "
                            f"{cfg.teacher_path()}/config.json")
        return plan
    import torch
    from transformers import AutoModel, AutoModelForMaskedLM

    from .modeling_minialbert import MiniAlbertForMaskedLM
    from .teacher import describe_family

    teacher = run.teacher
    plan.teacher_family = describe_family(teacher.family, teacher.config.model_type)
    plan.layer_map = teacher.layer_map
    student_logits = cfg.loss.student_logits_used(teacher.has_mlm_head)
    with torch.device("meta"):  # shapes only, no memory
        student = MiniAlbertForMaskedLM(run.student)
        total = sum(p.numel() for p in student.parameters())
        # A head that no term reads is frozen (student.build_student): weights only, no gradient or optimizer state.
        plan.frozen_student_params = 0 if student_logits else sum(p.numel() for p in student.mlm_head.parameters())
        plan.student_params = total - plan.frozen_student_params
        auto = AutoModelForMaskedLM if teacher.family.logits else AutoModel
        plan.teacher_params = sum(p.numel() for p in auto.from_config(teacher.config).parameters())
    bytes_per_weight = 4 if plan.precision == "fp32" else 2
    plan.memory = model_state_bytes(plan.student_params, plan.precision, plan.zero_stage, plan.offload, world_size)
    plan.memory["weights"] += plan.frozen_student_params * bytes_per_weight
    plan.memory["teacher"] = plan.teacher_params * bytes_per_weight
    if plan.seq_len is not None:
        logit_copies = int(student_logits) + int(cfg.loss.teacher_logits_used(teacher.has_mlm_head))
        plan.memory["activations"] = activation_bytes(run.student, plan.micro_batch_size, plan.seq_len,
                                                      cfg.data.mlm_probability, len(plan.layer_map), logit_copies)
    return plan
