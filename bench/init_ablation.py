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
import shutil
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

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
    """``model``: the shared-layer teacher; ``teacher``: the original, cut as deep."""
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
    layer_map = cfg.teacher.layer_map
    for name in ["embeddings", "cut", "shared-layer"] + [f"relaxed-{r}" for r in args.ranks]:
        model = AutoModel.from_pretrained(path)
        last = max(layer_map) if layer_map else model.config.num_hidden_layers
        if name == "embeddings":
            cut_embeddings(model, counts, cfg.student.embedding_size)
        else:
            cut_layers(model, last)
        if name != "embeddings" and name != "cut":
            share_layers(model)
        if name.startswith("relaxed-"):
            teacher = AutoModel.from_pretrained(path)
            cut_layers(teacher, last)
            relax_layers(model, teacher, int(name.split("-")[1]))
        save(model, tokenizer, Path(args.out) / name)
    if args.ranks:
        teacher = AutoModel.from_pretrained(path)
        print_delta_energy(teacher.encoder.layer[:max(layer_map) if layer_map else len(teacher.encoder.layer)],
                           args.ranks)
    for n in args.cuts:
        model = AutoModel.from_pretrained(path)
        cut_layers(model, n)
        save(model, tokenizer, Path(args.out) / f"cut-{n}")
    for spec in args.repeats:
        k, n = (int(x) for x in spec.split(":"))
        model = AutoModel.from_pretrained(path)
        layer = model.encoder.layer[k - 1]
        model.encoder.layer = torch.nn.ModuleList([copy.deepcopy(layer) for _ in range(n)])
        model.config.num_hidden_layers = n
        save(model, tokenizer, Path(args.out) / f"repeat-{k}-{n}")


def save(model, tokenizer, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"{out.name} -> {out}")


if __name__ == "__main__":
    main()
