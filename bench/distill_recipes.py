"""The distillation training steps the benchmark compares, and the models/batches they run on.

``original``: the step of nlpie-research/MiniALBERT ``general_distillation.py`` under the Hugging Face Trainer,
written anew here: fp32; a Hugging Face BertForMaskedLM teacher in train mode (dropout on) with eager attention,
all hidden states and all 12 attention maps; the student with eager attention, full-vocabulary logits at every
position and its own MLM cross-entropy over them; ``masked_select`` copies for every loss term; gradient
clipping at 1.0 (the Trainer's default) and ``torch.optim.AdamW`` (single-tensor loop on CPU).

``fast``: the project's training step, ``minialbert.step.train_step``: ``distillation_forward`` (teacher in eval mode, in bf16,
SDPA for unmapped layers, logits at the masked positions only; student weights in bf16 as DeepSpeed's bf16 mode
keeps them), backward, then what DeepSpeed's bf16 optimizer does, done here without DeepSpeed: bf16 gradients
copied into fp32 master gradients, foreach gradient clipping, fused AdamW on the fp32 master weights, master
weights copied back into the bf16 model. Its attention term is maps-free (``attention_kl="fused"``: the student's
attention through SDPA, no (B, heads, L, L) tensor of either model, see ``minialbert.attention_kl``).

``maps``: the fast step with the materialised attention KL (``attention_kl="materialised"``): the student's
attention eager, both models' mapped maps kept and read by the loss in fp32 — the fast path before issue 14.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from minialbert.config import LossConfig
from minialbert.configuration_minialbert import MiniAlbertConfig
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from minialbert.dist import DistContext
from minialbert.losses import EAGER, LossKernels
from minialbert.step import distillation_forward, train_step
from minialbert.teacher import Teacher, uniform_layer_map

LR, WEIGHT_DECAY, MAX_GRAD_NORM = 5e-4, 1e-4, 1.0


def paper_configs(dropout: float = 0.1):
    """(teacher BertConfig, student MiniAlbertConfig) at the paper's shape: bert-base teacher; 6 recursions x 768,
    E 312, adapters r 16 (ALBERT-base-v1 layer, so dropout 0.1)."""
    from transformers import BertConfig

    teacher = BertConfig(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    student = MiniAlbertConfig(
        embedding_size=312, hidden_size=768, num_attention_heads=12, intermediate_size=3072, num_recursions=6,
        use_adapters=True, adapter_reduction_factor=16, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return teacher, student


def build_models(teacher_config, student_config, seed: int = 0) -> tuple[nn.Module, MiniAlbertForMaskedLM]:
    """Random-weight fp32 teacher (BertForMaskedLM, eager attention so that maps can be returned) and student."""
    from transformers import BertForMaskedLM

    torch.manual_seed(seed)
    teacher_config = copy.deepcopy(teacher_config)
    teacher_config._attn_implementation = "eager"
    teacher = BertForMaskedLM(teacher_config)
    teacher.requires_grad_(False)
    student = MiniAlbertForMaskedLM(student_config)
    return teacher, student


def make_batch(vocab_size: int, batch: int, seq: int, masked_fraction: float = 0.15, seed: int = 0,
               padded_rows: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids, ``masked_fraction`` of the real positions labelled (the rest -100); the last
    ``padded_rows`` rows have their second half padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if padded_rows:
        mask[batch - padded_rows:, seq // 2:] = 0
        ids[mask == 0] = 0
    labels = torch.full((batch, seq), -100)
    chosen = (torch.rand(batch, seq, generator=g) < masked_fraction) & mask.bool()
    chosen[:, 1] = True  # at least one masked token per row
    labels[chosen] = ids[chosen]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids), "labels": labels}


# ----- original ---------------------------------------------------------------------------------------------------
def original_losses(s_out, t_out, attention_mask: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0):
    """The original DistillationWrapper's loss, term by term: (total, mlm, attention, hidden, output)."""
    n_heads = s_out.attentions[0].shape[1]
    att = hid = None
    for i, s_map in enumerate(s_out.attentions):
        t_map = t_out.attentions[2 * i + 1]  # teacher layers 2, 4, ..., 12
        rows = attention_mask.unsqueeze(1).repeat(1, n_heads, 1).unsqueeze(-1).expand_as(s_map).bool()
        s_sel = torch.masked_select(s_map, rows).view(-1, s_map.size(-1)) + 1e-12
        t_sel = torch.masked_select(t_map, rows).view(-1, t_map.size(-1)) + 1e-12
        with warnings.catch_warnings():  # 'mean' (not 'batchmean') is what the original used
            warnings.simplefilter("ignore", UserWarning)
            term = F.kl_div(torch.log(s_sel), t_sel, reduction="mean")
        att = term if att is None else att + term
    for i, s_h in enumerate(s_out.hidden_states[1:]):
        t_h = t_out.hidden_states[1:][2 * i + 1]
        tok = attention_mask.unsqueeze(-1).expand_as(s_h).bool()
        s_sel = torch.masked_select(s_h, tok).view(-1, s_h.size(-1))
        t_sel = torch.masked_select(t_h, tok).view(-1, t_h.size(-1))
        term = F.cosine_embedding_loss(s_sel, t_sel, s_sel.new_ones(s_sel.size(0)), reduction="mean")
        hid = term if hid is None else hid + term
    pick = (labels > -1).unsqueeze(-1).expand_as(s_out.logits).bool()
    s_log = torch.masked_select(s_out.logits, pick).view(-1, s_out.logits.size(-1))
    t_log = torch.masked_select(t_out.logits, pick).view(-1, s_out.logits.size(-1))
    out = F.kl_div(F.log_softmax(s_log / temperature, -1), F.softmax(t_log / temperature, -1),
                   reduction="batchmean") * temperature**2
    mlm = s_out.loss
    total = 1.0 * mlm + 3.0 * (att + hid) + 5.0 * out
    return total, mlm, att, hid, out


@dataclass
class OriginalRecipe:
    teacher: nn.Module
    student: MiniAlbertForMaskedLM
    optimizer: torch.optim.Optimizer

    @classmethod
    def build(cls, teacher: nn.Module, student: MiniAlbertForMaskedLM, device: str | torch.device = "cpu") -> "OriginalRecipe":
        teacher = copy.deepcopy(teacher).to(device, torch.float32).train()  # the Trainer's model.train() reached it
        student = copy.deepcopy(student).to(device, torch.float32).train()
        optimizer = torch.optim.AdamW(student.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        return cls(teacher, student, optimizer)

    def losses(self, batch: dict[str, torch.Tensor]):
        ids, mask, types, labels = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], batch["labels"]
        s_out = self.student(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels,
                             output_attentions=True, output_hidden_states=True)
        with torch.no_grad():
            t_out = self.teacher(input_ids=ids, attention_mask=mask, token_type_ids=types,
                                 output_hidden_states=True, output_attentions=True)
        return original_losses(s_out, t_out, mask, labels)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        total = self.losses(batch)[0]
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), MAX_GRAD_NORM, foreach=False)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total.item()


# ----- fast -------------------------------------------------------------------------------------------------------
class PlainEngine:
    """What ``minialbert.step.train_step`` asks of a DeepSpeed engine, in plain torch: the student's forward,
    ``backward``, and a ``step`` that does what DeepSpeed's bf16 optimizer does (bf16 gradients into fp32 master
    gradients, foreach clipping, fused AdamW on the master weights, master weights copied back)."""

    def __init__(self, student: MiniAlbertForMaskedLM, master: list[torch.Tensor], optimizer: torch.optim.Optimizer):
        self.student, self.master, self.optimizer = student, master, optimizer
        self.norm = None
        # Persistent fp32 gradients, as DeepSpeed keeps them: each bf16 gradient is cast into its buffer once a
        # step (a fresh ``.float()`` copy every step costs page faults: 86 ms a step for the 30522 x 768 decoder).
        self.params = [p for p in student.parameters() if p.requires_grad]
        self.separate_master = master[0] is not self.params[0]
        if self.separate_master:
            for m in master:
                m.grad = torch.zeros_like(m)

    def __call__(self, **inputs):
        return self.student(**inputs)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        if self.separate_master:
            torch._foreach_copy_([m.grad for m in self.master], [p.grad for p in self.params])
        self.norm = torch.nn.utils.clip_grad_norm_(self.master, MAX_GRAD_NORM, foreach=True)
        self.optimizer.step()
        if self.separate_master:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.master)  # each weight cast once a step
            for p in self.params:
                p.grad = None
        else:
            self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self):
        return self.norm

    def fp16_enabled(self) -> bool:
        return False


@dataclass
class FastRecipe:
    teacher: Teacher
    student: MiniAlbertForMaskedLM
    engine: PlainEngine
    device: torch.device
    mode: str = "default"
    attention_kl: str = "fused"
    logit_terms: bool = True
    kernels: LossKernels = EAGER

    @classmethod
    def build(cls, teacher: nn.Module, student: MiniAlbertForMaskedLM, dtype: torch.dtype = torch.bfloat16,
              mode: str = "default", device: str | torch.device = "cpu",
              attention_kl: str = "fused", logit_terms: bool = True, kernels: LossKernels = EAGER) -> "FastRecipe":
        """``logit_terms=False``: the MLM and output weights 0 (cpu.yaml's loss with a teacher without an MLM
        head): neither model's head runs and the student's is frozen, as ``minialbert.student.build_student``
        does."""
        hf = copy.deepcopy(teacher)
        layer_map = uniform_layer_map(hf.config.num_hidden_layers, student.config.num_recursions)
        t = Teacher(hf, layer_map).to(device, dtype)
        s = copy.deepcopy(student).to(device, dtype).train()
        s.mlm_head.requires_grad_(logit_terms)
        params = [p for p in s.parameters() if p.requires_grad]
        # fp32 master weights: the student's own parameters when it is fp32
        master = params if dtype == torch.float32 else [p.detach().float().requires_grad_() for p in params]
        optimizer = torch.optim.AdamW(master, lr=LR, weight_decay=WEIGHT_DECAY, fused=True)
        return cls(t, s, PlainEngine(s, master, optimizer), torch.device(device), mode, attention_kl, logit_terms,
                   kernels)

    @property
    def master(self) -> list[torch.Tensor]:
        """fp32 master weights (the student's own parameters when it is fp32)."""
        return self.engine.master

    @property
    def loss_config(self) -> LossConfig:
        # LossConfig's defaults are the paper's weights (1, 3, 3, 5) and temperature 1.
        weights = {} if self.logit_terms else {"mlm": 0.0, "output": 0.0}
        return LossConfig(mode=self.mode, attention_kl=self.attention_kl, **weights)

    def losses(self, batch: dict[str, torch.Tensor]):
        return distillation_forward(self.student, self.teacher, batch, self.loss_config, kernels=self.kernels)

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        """The training loop's own step (``minialbert.step.train_step``) on one batch, one process."""
        one_process = DistContext(rank=0, world_size=1, local_rank=0, device=self.device)
        batch = {k: v.cpu() for k, v in batch.items()}  # train_step moves micro-batches to the device itself
        return train_step(self.engine, self.teacher, iter([batch]), 1, self.loss_config, one_process,
                          self.kernels).record["loss"]
