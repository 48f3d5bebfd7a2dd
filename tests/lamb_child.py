"""One rank of the LAMB tests (tests/test_lamb.py): real DeepSpeed engines over the tiny student, fp32, dropout
off, the same global batches on any rank count; for each requested ZeRO stage, the rank-mean loss of every step
and (rank 0) the full weights after it, saved to OUT.

    python tests/lamb_child.py OUT STEPS STAGE[:per-partition][@LR] ...   (RANK, WORLD_SIZE, MASTER_* set)

``:per-partition`` swaps the engine's layout for one that treats every flat partition as a tensor of its own, the
trust ratio of DeepSpeed issue #490, so that the tests can show they catch it."""

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


def run(stage: int, partition_ratios: bool, lr: str, steps: int, ctx) -> dict:
    cfg = load_run_config("configs/distill/tiny.yaml", OVERRIDES + ([f"optim.lr={lr}"] if lr else []))
    torch.manual_seed(0)
    model = MiniAlbertForMaskedLM(tiny_config())
    ds_json = f"configs/ds/zero{stage}.json"
    engine = ds.initialize(model, ds.build_ds_config(cfg, ds_json, ctx.world_size, on_cuda=False), cfg.optim,
                           cfg.train.max_steps)
    if partition_ratios:
        per_partition(engine)
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
    return {"losses": losses, "weights": weights}


def main() -> None:
    out, steps, runs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    ctx = dist.init_distributed()
    results = {}
    for name in runs:
        spec, _, lr = name.partition("@")
        stage, _, mode = spec.partition(":")
        results[name] = run(int(stage), mode == "per-partition", lr, steps, ctx)
    if ctx.is_rank0:
        torch.save(results, out)
    dist.destroy()


if __name__ == "__main__":
    main()
