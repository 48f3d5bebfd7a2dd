"""One rank of the LAMB tests (tests/test_lamb.py): real DeepSpeed engines over the tiny student, fp32, dropout
off, the same global batches on any rank count; for each requested ZeRO stage, the rank-mean loss of every step
and (rank 0) the full weights after it, saved to OUT.

    python tests/lamb_child.py OUT STEPS STAGE[+offload|+bf16][:per-partition][@LR] ...
    (RANK, WORLD_SIZE, MASTER_* set)

``+offload``: ``configs/ds/zero2_offload.json`` (the optimizer steps CPU copies; STAGE must be 2). ``+bf16``: bf16
training, whose fp32 master weights ZeRO-1 keeps in DeepSpeed's BF16_Optimizer. Every run also records, before its
first step, the squared norm and element count of every model tensor as the layout's pieces add them up over the
ranks (what LAMB's trust ratios are made of), beside the model's own. ``:per-partition`` swaps the engine's layout
for one that treats every flat partition as a tensor of its own, the trust ratio of DeepSpeed issue #490, so that
the tests can show they catch it."""

from __future__ import annotations

import sys

import torch

from minialbert import dist, engine as ds
from minialbert.config import load_run_config
from minialbert.lamb import Piece
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from tiny_models import tiny_config

GLOBAL, MICRO, SEQ = 4, 2, 8
OVERRIDES = ["optim.name=lamb", "optim.warmup_steps=0", "optim.weight_decay=0.01", "optim.eps=1e-6",
             "train.precision=fp32", "train.max_steps=10", f"train.global_batch_size={GLOBAL}",
             f"train.micro_batch_size={MICRO}"]


def batches(steps: int) -> list[torch.Tensor]:
    """The global batch (GLOBAL, SEQ) of every step, the same on every rank."""
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(5, 90, (GLOBAL, SEQ), generator=gen) for _ in range(steps)]


def full_weights(engine, model) -> dict[str, torch.Tensor]:
    import deepspeed

    params = dict(model.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), enabled=engine.zero_optimization_stage() == 3):
        return {k: p.detach().clone().float() for k, p in params.items()}


def per_partition(engine) -> None:
    lamb = engine.basic_optimizer
    flats = [t for t, _ in lamb._layout.values()]  # every tensor it steps (ZeRO-3 hands them over one at a time)
    lamb.set_layout([(t, [Piece(i, 0, t.numel())]) for i, t in enumerate(flats)], len(flats), None)


def layout_sums(engine, model) -> dict[str, torch.Tensor]:
    """Per model tensor: squared norm and element count summed over the pieces the layout names on every rank, and
    the model's own (ZeRO-3 partitions the model's tensors too; the other stages keep them whole on every rank)."""
    lamb = engine.basic_optimizer
    sums = torch.zeros(2, lamb._num_tensors, dtype=torch.float64)
    for stepped, pieces in lamb._layout.values():
        for piece in pieces:
            values = stepped.view(-1).narrow(0, piece.start, piece.length).double()
            sums[0, piece.tensor] += values.square().sum()
            sums[1, piece.tensor] += piece.length
    if lamb._all_reduce is not None:
        sums = lamb._all_reduce(sums)
    whole = full_weights(engine, model)
    own = torch.tensor([[float(w.double().square().sum()) for w in whole.values()],
                        [float(w.numel()) for w in whole.values()]], dtype=torch.float64)
    return {"layout": sums, "model": own}


def run(stage: int, variant: str, partition_ratios: bool, lr: str, steps: int, ctx) -> dict:
    overrides = OVERRIDES + ([f"optim.lr={lr}"] if lr else []) + (["train.precision=bf16"] if variant == "bf16" else [])
    cfg = load_run_config("configs/distill/tiny.yaml", overrides)
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(tiny_config())
    ds_json = "configs/ds/zero2_offload.json" if variant == "offload" else f"configs/ds/zero{stage}.json"
    engine = ds.initialize(model, ds.build_ds_config(cfg, ds_json, ctx.world_size, on_cuda=False), cfg.optim,
                           cfg.train.max_steps)
    if partition_ratios:
        per_partition(engine)
    sums = layout_sums(engine, model)
    accum = ds.accumulation_steps(cfg, ctx.world_size)
    losses, weights = [], []
    for ids in batches(steps):
        mine = ids.view(ctx.world_size, accum, MICRO, SEQ)[ctx.rank]  # this rank's micro-batches
        total = 0.0
        for micro in mine:
            loss = engine(input_ids=micro, labels=micro).loss
            engine.backward(loss)
            engine.step()
            total += float(loss.detach()) / accum
        losses.append(float(dist.all_reduce_mean(torch.tensor([total]))[0]))
        weights.append(full_weights(engine, model))
    return {"losses": losses, "weights": weights, "layout_sums": sums, "optimizer": type(engine.optimizer).__name__}


def main() -> None:
    out, steps, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ctx = dist.init_distributed()
    results = {}
    for name in runs:
        spec, _, lr = name.partition("@")
        spec, _, mode = spec.partition(":")
        stage, _, variant = spec.partition("+")
        results[name] = run(int(stage), variant, mode == "per-partition", lr, steps, ctx)
    if ctx.is_rank0:
        torch.save(results, out)
    dist.destroy()


if __name__ == "__main__":
    main()
