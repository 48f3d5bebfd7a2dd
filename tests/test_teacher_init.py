"""The teacher-derived initialisation (``student.init: teacher``): survives save/load and export, starts closer to
the teacher than a random init, refuses widths it cannot copy; the CPU recipe resolves and is small enough."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from distill_helpers import REPO, build_teacher, distill_env, pack_shards, run_distill
from minialbert.agreement import measure_agreement
from minialbert.config import ConfigError, load_run_config
from minialbert.data import iterate_split
from minialbert.student import build_student
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from minialbert.teacher import load_teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_init")
    teacher = build_teacher(root / "teacher", layers=4, hidden=32)
    shards = pack_shards(teacher, root / "shards", n_docs=80, seq_len=32)
    return root, teacher, shards


def _config(world, *overrides):
    _, teacher, shards = world
    sources = json.dumps([{"path": str(shards), "weight": 1.0}])
    return load_run_config(REPO / "configs" / "distill" / "tiny.yaml",
                           [f"teacher.path={teacher}", f"data.sources={sources}", "train.precision=fp32", *overrides])


def _student(world, *overrides):
    cfg = _config(world, *overrides)
    teacher = load_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map)
    torch.manual_seed(cfg.train.seed)  # as distill.py does: the random parts (adapters' down) match the run's
    return build_student(cfg, teacher), teacher


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sb[name].float(), sa[name].float(), atol=atol, rtol=0, msg=name)


DELTAS = "student.recursion_delta_rank=4"


@pytest.mark.parametrize("overrides", [(), (DELTAS,)], ids=["shared", "deltas"])
def test_teacher_init_survives_save_and_from_pretrained(world, tmp_path, overrides):
    student, _ = _student(world, *overrides)
    student.save_pretrained(tmp_path / "student")
    _assert_same_tensors(student, MiniAlbertForMaskedLM.from_pretrained(tmp_path / "student"))


@pytest.mark.parametrize("overrides", [(), (DELTAS,)], ids=["shared", "deltas"])
def test_teacher_init_survives_a_run_and_its_export(world, tmp_path, overrides):
    """A one-step run at a negligible learning rate: the export holds the initial tensors (HF's _init_weights
    must not have redrawn any of them on the way)."""
    root, teacher, shards = world
    student, _ = _student(world, *overrides)
    done = run_distill(tmp_path / "run", teacher, [shards], "--max-steps", "1", "train.precision=fp32",
                       "optim.lr=1e-12", "optim.warmup_steps=0", *overrides, ranks=1)
    assert done.returncode == 0, done.stderr[-3000:]
    exported = MiniAlbertForMaskedLM.from_pretrained(tmp_path / "run" / "export")
    _assert_same_tensors(student, exported, atol=1e-6)


def test_teacher_init_starts_closer_to_the_teacher_than_random(world):
    _, _, shards = world
    batches = list(iterate_split(str(shards), "validation", batch_size=8, max_batches=4))
    agreement = {}
    for init in ("teacher", "random"):
        student, teacher = _student(world, f"student.init={init}")
        agreement[init] = measure_agreement(student, teacher, batches)
    teacher_cos, random_cos = agreement["teacher"]["hidden_cosine"], agreement["random"]["hidden_cosine"]
    assert all(t > r + 0.2 for t, r in zip(teacher_cos, random_cos)), agreement
    assert sum(agreement["teacher"]["attention_kl"]) < sum(agreement["random"]["attention_kl"]), agreement


def test_a_narrower_feed_forward_keeps_the_teacher_units_that_carry_most(world):
    student, teacher = _student(world, "student.intermediate_size=40")
    layers = list(teacher.layers[: max(teacher.layer_map)])  # the layers the recursions replace
    w_in = torch.stack([layer.intermediate.dense.weight.float() for layer in layers]).mean(0)  # (64, 32)
    kept = student.minialbert.layer.ffn.ffn.weight  # (40, 32): a subset of the mean's rows, in order
    rows = [int((w_in - row).abs().sum(1).argmin()) for row in kept]
    assert rows == sorted(set(rows)) and len(rows) == 40
    torch.testing.assert_close(kept, w_in[rows])


def test_shared_layer_from_one_teacher_layer_copies_it(world):
    student, teacher = _student(world, "student.shared_layer_from=[3]")
    shared, source = student.minialbert.layer, teacher.layers[2]
    for mine, theirs in ((shared.attention.query, source.attention.self.query),
                         (shared.attention.LayerNorm, source.attention.output.LayerNorm),
                         (shared.ffn.ffn, source.intermediate.dense), (shared.ffn.ffn_output, source.output.dense)):
        torch.testing.assert_close(mine.weight, theirs.weight, rtol=0, atol=0)
        torch.testing.assert_close(mine.bias, theirs.bias, rtol=0, atol=0)
    mean, _ = _student(world)
    assert not torch.equal(mean.minialbert.layer.attention.query.weight, shared.attention.query.weight)


def test_full_rank_recursion_deltas_turn_the_student_into_its_teacher_layers(world):
    """E = H (embeddings copied), no adapters, deltas of full rank, the recursions mapped to layers 1 and 2: each
    recursion is exactly its teacher layer."""
    student, teacher = _student(world, "student.embedding_size=32", "student.use_adapters=false",
                                "student.recursion_delta_rank=32", "teacher.layer_map=[1,2]")
    ids = torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = student.eval().minialbert(ids, output_hidden_states=True).hidden_states
        theirs = teacher.base.eval()(ids, output_hidden_states=True).hidden_states
    assert len(mine) == 3
    for depth in range(3):  # the embeddings, then recursion i = teacher layer i
        torch.testing.assert_close(mine[depth], theirs[depth], rtol=0, atol=2e-5)


def test_truncated_recursion_deltas_keep_the_top_of_each_difference(world):
    """Rank R: each recursion's weight matrix is its teacher layer's up to the best rank-R error (Eckart-Young),
    biases and LayerNorms exactly."""
    student, teacher = _student(world, "student.recursion_delta_rank=8")
    shared = student.minialbert.layer
    for delta, mapped in zip(student.minialbert.deltas, teacher.layer_map):
        source = teacher.layers[mapped - 1]
        for part, mine, theirs in ((delta.query, shared.attention.query, source.attention.self.query),
                                   (delta.ffn_output, shared.ffn.ffn_output, source.output.dense)):
            difference = theirs.weight - mine.weight
            error = theirs.weight - (mine.weight + part.up @ part.down)
            tail = torch.linalg.svdvals(difference)[8:].square().sum()
            torch.testing.assert_close(error.square().sum(), tail, rtol=1e-4, atol=1e-7)
            torch.testing.assert_close(mine.bias + part.bias, theirs.bias, rtol=0, atol=1e-6)
        norm = source.output.LayerNorm
        torch.testing.assert_close(shared.ffn.LayerNorm.weight + delta.ffn_norm.weight, norm.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layers, message", [("[5]", "the teacher has 4 layers"), ("[0]", "numbered from 1")])
def test_shared_layer_from_outside_the_teacher_is_a_one_line_error(world, layers, message):
    with pytest.raises(ConfigError, match=rf"student.shared_layer_from=\[\d\].*{message}"):
        _student(world, f"student.shared_layer_from={layers}")


@pytest.mark.parametrize("override, field", [
    ("student.intermediate_size=128", "intermediate_size"),
    ("student.embedding_size=64", "embedding_size"),
])
def test_widths_that_forbid_a_copy_are_one_line_errors(world, override, field):
    with pytest.raises(ConfigError, match=f"student.{field}"):
        _student(world, override)
    _student(world, override, "student.init=random")  # the random init takes any width


def test_width_error_from_the_command_line(world, tmp_path):
    _, teacher, shards = world
    sources = json.dumps([{"path": str(shards), "weight": 1.0}])
    done = subprocess.run(
        [sys.executable, "-m", "minialbert.distill", "--config", "configs/distill/tiny.yaml", "--run-dir",
         str(tmp_path / "run"), f"teacher.path={teacher}", f"data.sources={sources}", "train.precision=fp32",
         "student.intermediate_size=128"],
        cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "student.intermediate_size=128" in errors[0], done.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_cpu_recipe_plans_for_two_ranks_and_is_a_third_of_its_teacher():
    from transformers import AutoConfig, AutoModel

    from minialbert.params import count_parameters
    from minialbert.student import student_config

    done = subprocess.run([sys.executable, "-m", "minialbert.distill", "--config", "configs/distill/cpu.yaml",
                           "--check", "--world-size", "2"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "global batch 32" in done.stdout
    cfg = load_run_config(REPO / "configs" / "distill" / "cpu.yaml")
    teacher_config = AutoConfig.from_pretrained(cfg.teacher_path())
    with torch.device("meta"):
        teacher = sum(p.numel() for p in AutoModel.from_config(teacher_config).parameters())
        student = count_parameters(MiniAlbertForMaskedLM(student_config(cfg, teacher_config)))["encoder"]
    assert student <= teacher / 3, (student, teacher)
    assert cfg.student.init == "teacher" and cfg.student.use_adapters  # adapters trained in distillation (issue 33)


def test_a_bf16_run_initialises_its_student_from_the_teachers_fp32_weights(world, tmp_path):
    """distill.build_run (what every rank runs) builds the student from the fp32 teacher, then casts the teacher to
    the run's dtype: the student equals the fp32 init exactly, not one computed from bf16-rounded weights."""
    from minialbert import dist
    from minialbert.distill import build_run
    from minialbert.resolved_run import resolve_run

    cfg = _config(world, DELTAS, "train.precision=bf16")
    run = resolve_run(cfg, REPO / "configs" / "ds" / "zero2.json", 1, on_cuda=False)
    ctx = dist.DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    teacher, student, _, _ = build_run(run, False, ctx, tmp_path / "run")
    assert next(teacher.parameters()).dtype == torch.bfloat16
    expected, _ = _student(world, DELTAS)  # from load_teacher's fp32 weights, same seed
    _assert_same_tensors(expected, student)
