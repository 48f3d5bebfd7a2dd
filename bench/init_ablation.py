"""Where a teacher-initialised student loses its teacher's accuracy: the teacher with one of the student's limits
at a time, saved as Hugging Face folders for ``python -m minialbert.finetune``.

    .venv/bin/python bench/init_ablation.py --config configs/distill/cpu.yaml --out runs/bench/ablation

writes, for the run config's teacher, data and student:

- ``embeddings/``: the teacher with its word, position and token-type tables cut to the E directions that
  ``student.init: teacher`` keeps (``teacher_init.embedding_basis``, words weighted by the shards' counts);
  its layers untouched. What the factorised embeddings cost.
- ``cut/``: the teacher cut after its last mapped layer (``teacher.layer_map``; the last layer without one): what
  the student could at best imitate.
- ``shared-layer/``: the teacher cut after its last mapped layer (``teacher.layer_map``; the last layer without
  one), those layers replaced by their element-wise mean (the student's shared layer at step 0), its embeddings
  untouched. What one layer for all costs.
- ``relaxed-R/`` (``--ranks R ...``): ``shared-layer`` plus, per layer, the rank-R truncated SVD of each weight
  matrix's difference from the mean, and that layer's own biases and LayerNorms (relaxed recursive transformers'
  per-recursion deltas). What per-recursion low-rank deltas of rank R give back.
- ``cut-N/`` (``--cuts N ...``): the teacher's first N layers. ``repeat-K-N/`` (``--repeats K:N ...``): teacher layer K
  (1-based) applied N times, nothing else of the layers (a shared layer copied from one teacher layer).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from data_prep.files import atomic_folder
from minialbert.config import load_run_config
from minialbert.data import token_counts
from minialbert.teacher_init import embedding_basis


def cut_embeddings(model, counts: torch.Tensor, e: int) -> None:
    emb = model.embeddings
    tables = [emb.word_embeddings.weight, emb.position_embeddings.weight, emb.token_type_embeddings.weight]
    basis = embedding_basis(*(t.detach().float() for t in tables), counts, e)  # (E, H)
    with torch.no_grad():
        for t in tables:  # LayerNorm removes each row's mean: keep the centred rows' part in the E directions
            centred = t - t.mean(dim=1, keepdim=True)
            t.copy_(centred @ basis.T @ basis)


def cut_layers(model, last: int) -> None:
    model.encoder.layer = model.encoder.layer[:last]
    model.config.num_hidden_layers = last


def share_layers(model) -> None:
    layers = model.encoder.layer
    with torch.no_grad():
        for name, _ in layers[0].named_parameters():
            mean = torch.stack([layer.get_parameter(name) for layer in layers]).mean(dim=0)
            for layer in layers:
                layer.get_parameter(name).copy_(mean)


def relax_layers(model, teacher, rank: int) -> None:
    """``model``: the shared-layer teacher; ``teacher``: the original (its layers beyond ``model``'s are unused)."""
    with torch.no_grad():
        for mine, theirs in zip(model.encoder.layer, teacher.encoder.layer):
            for name, p in mine.named_parameters():
                own = theirs.get_parameter(name)
                if p.ndim < 2:  # biases and LayerNorms: the layer's own
                    p.copy_(own)
                    continue
                u, s, vh = torch.linalg.svd(own - p, full_matrices=False)
                p.add_(u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank])


def print_delta_energy(layers, ranks: list[int]) -> None:
    """Per weight matrix: how much of the layers' energy is their difference from the mean, and how much of that
    difference a rank-R SVD per layer keeps."""
    for name, p in layers[0].named_parameters():
        if p.ndim < 2:
            continue
        weights = torch.stack([layer.get_parameter(name).detach().float() for layer in layers])
        deltas = weights - weights.mean(dim=0)
        spectra = [torch.linalg.svdvals(d).square() for d in deltas]
        total = sum(float(s.sum()) for s in spectra)
        kept = " ".join(f"rank {r}: {sum(float(s[:r].sum()) for s in spectra) / total:.2f}" for r in ranks)
        print(f"{name}: |W - mean|^2 / |W|^2 = {total / float(weights.square().sum()):.2f}; kept of it by {kept}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ranks", type=int, nargs="*", default=[], help="ranks of the relaxed-R variants")
    p.add_argument("--cuts", type=int, nargs="*", default=[], help="depths of the cut-N variants")
    p.add_argument("--repeats", nargs="*", default=[], help="K:N, the repeat-K-N variants")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_run_config(args.config, args.overrides)
    path = cfg.teacher_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    counts = torch.from_numpy(token_counts([src.path for src in cfg.data.sources], tokenizer.vocab_size))
    teacher = AutoModel.from_pretrained(path)
    last = max(cfg.teacher.layer_map or [teacher.config.num_hidden_layers])  # a uniform map ends at the last layer

    def shared(model, rank: int | None = None) -> None:
        cut_layers(model, last)
        share_layers(model)
        if rank is not None:
            relax_layers(model, teacher, rank)

    def repeat(model, k: int, n: int) -> None:
        model.encoder.layer = torch.nn.ModuleList([copy.deepcopy(model.encoder.layer[k - 1]) for _ in range(n)])
        model.config.num_hidden_layers = n

    variants = {"embeddings": lambda m: cut_embeddings(m, counts, cfg.student.embedding_size),
                "cut": lambda m: cut_layers(m, last), "shared-layer": shared}
    variants.update({f"relaxed-{r}": lambda m, r=r: shared(m, r) for r in args.ranks})
    variants.update({f"cut-{n}": lambda m, n=n: cut_layers(m, n) for n in args.cuts})
    for spec in args.repeats:
        k, n = (int(x) for x in spec.split(":"))
        variants[f"repeat-{k}-{n}"] = lambda m, k=k, n=n: repeat(m, k, n)
    for name, build in variants.items():
        model = copy.deepcopy(teacher)
        build(model)
        out = Path(args.out) / name
        with atomic_folder(out, replace=True) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        print(f"{name} -> {out}")
    if args.ranks:
        print_delta_energy(teacher.encoder.layer[:last], args.ranks)


if __name__ == "__main__":
    main()
