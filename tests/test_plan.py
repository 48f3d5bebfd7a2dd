"""``distill --check``: the plan for a world size, and every recipe the documents show, checked at the world size
each command states (a new README or docs line is checked the day it is written)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys

import pytest

from distill_helpers import REPO, VENV_BIN, build_teacher, distill_env, free_port, pack_shards

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DISTILL_ARGS = ("distill.py", "slurm/pretrain.sh", "minialbert.distill")


def check(*args: str) -> subprocess.CompletedProcess:
    """``distill.py --check ARGS`` from the repository root, in this process: the same command line through the same
    ``main`` (a new process for each of some 40 plans would spend ~7 s apiece importing torch and transformers;
    the exit code and stderr of a real process are checked below)."""
    from minialbert.distill import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--check", *args])
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def check_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minialbert.distill", "--check", *args], cwd=REPO,
                          env=distill_env(), capture_output=True, text=True, timeout=600)


def code_blocks(text: str) -> list[str]:
    """The shell code blocks of a Markdown text (fenced ```bash, ```sh or unlabelled)."""
    blocks, lang, lines = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                if lang in ("", "bash", "sh"):
                    blocks.append("\n".join(lines))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every shell command in a document's code blocks that passes --config to distillation
    (other tools that take a run config, such as bench/ scripts, are not plans)."""
    found = []
    for doc in DOCUMENTS:
        for block in code_blocks(doc.read_text()):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split("  #")[0].strip()
                if "--config" in line and any(entry in line for entry in (*DISTILL_ARGS, "submit_distill")):
                    found.append((doc.name, line))
    return found


def world_size_of(words: list[str]) -> int:
    """Ranks a documented command starts: deepspeed --num_gpus, sbatch --nodes x --ntasks-per-node or --ntasks,
    submitit --nodes x --gpus-per-node or --ntasks; a plain python process is 1."""
    opts = {}
    for i, w in enumerate(words):
        if w.startswith("--") and "=" in w:
            key, value = w.split("=", 1)
            opts.setdefault(key, value)
        elif w.startswith("--") and i + 1 < len(words) and re.fullmatch(r"\d+", words[i + 1]):
            opts.setdefault(w, words[i + 1])
    if "--world-size" in opts:  # --check's own
        return int(opts["--world-size"])
    if words[0].endswith("deepspeed"):
        return int(opts["--num_gpus"])
    if "launchers.submit_distill" in words and "--ntasks" in opts:  # its --ntasks: CPU ranks per node
        return int(opts.get("--nodes", "1")) * int(opts["--ntasks"])
    if "--ntasks" in opts:
        return int(opts["--ntasks"])
    per_node = opts.get("--ntasks-per-node") or opts.get("--gpus-per-node")
    if per_node:
        return int(opts.get("--nodes", "1")) * int(per_node)
    return 1


def distill_arguments(words: list[str]) -> list[str]:
    """The arguments that reach distill.py: after the script (or the launcher's ``--``)."""
    if "--" in words:
        rest = words[words.index("--") + 1:]
    else:
        start = next(i for i, w in enumerate(words) if w.endswith(DISTILL_ARGS))
        rest = words[start + 1:]
    return [w for w in rest if w != "..."]


COMMANDS = documented_commands()


def test_the_documents_show_recipes():
    assert any("general.yaml" in c for _, c in COMMANDS) and any("bio.yaml" in c for _, c in COMMANDS)


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_every_documented_recipe_resolves_at_its_world_size(where, command):
    words = shlex.split(command.replace("DS_ACCELERATOR=cpu ", ""))
    world = world_size_of(words)
    done = check(*distill_arguments(words), "--world-size", str(world))
    assert done.returncode == 0, f"{where}: {command}\n{done.stderr}"
    assert f"world size {world}:" in done.stdout


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "configs" / "distill").glob("*.yaml")))
def test_every_shipped_recipe_resolves_on_2_ranks(recipe):
    done = check("--config", f"configs/distill/{recipe}", "--world-size", "2")
    assert done.returncode == 0, done.stderr
    assert "world size 2:" in done.stdout


@pytest.mark.parametrize("recipe", ["general-paper", "bio-paper"])
@pytest.mark.parametrize("world", [4, 8, 16])
def test_paper_recipes_keep_the_papers_batch_on_4_8_and_16_gpus(recipe, world):
    done = check("--config", f"configs/distill/{recipe}.yaml", "--world-size", str(world))
    assert done.returncode == 0, done.stderr
    accumulation = 192 // (12 * world)
    assert f"micro-batch 12 per rank x accumulation {accumulation} x {world} ranks = global batch 192" in done.stdout
    assert "loss mode paper" in done.stdout  # recipes named after the paper reproduce its objective


@pytest.mark.parametrize("world, accumulation", [(64, 4), (128, 2)])
def test_large_batch_recipe_resolves_on_64_and_128_gpus_with_lamb(world, accumulation):
    done = check("--config", "configs/distill/general-large-batch.yaml", "--world-size", str(world))
    assert done.returncode == 0, done.stderr
    assert (f"micro-batch 16 per rank x accumulation {accumulation} x {world} ranks = global batch 4096"
            in done.stdout)
    assert ("optimizer lamb: lr 0.00177, warm-up 117 steps then linear decay, betas 0.9/0.999, eps 1e-06, weight "
            "decay 0.01, gradient clipping 1, trust ratio per tensor capped at 10") in done.stdout


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_check_plans_every_zero_stage(stage):
    done = check("--config", "configs/distill/general-paper.yaml", "--world-size", "8", "--deepspeed",
                 f"configs/ds/zero{stage}.json", "train.precision=fp32")
    assert done.returncode == 0, done.stderr
    assert f"precision fp32, ZeRO stage {stage}, loss mode paper" in done.stdout
    assert "optimizer adamw: lr 0.0005, warm-up 5,000 steps" in done.stdout


def test_a_world_size_that_does_not_fit_names_the_fields_and_what_works():
    done = check_process("--config", "configs/distill/general.yaml", "--world-size", "6")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: train.global_batch_size=192 is not a multiple of train.micro_batch_size (12) x world size (6); "
        "with micro-batch 12 the world sizes that work are 1, 2, 4, 8, 16; at world size 6 set "
        "train.micro_batch_size to one of 1, 2, 4, 8, 16, 32"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    teacher = build_teacher(root / "teacher")
    return teacher, pack_shards(teacher, root / "shards", seq_len=32)


def test_plan_with_the_teacher_and_shards_at_hand(tiny_world, tmp_path):
    from transformers import AutoConfig

    from minialbert import flops
    from minialbert.config import load_run_config
    from minialbert.student import student_config

    teacher, shards = tiny_world
    overrides = [f"teacher.path={teacher}", f"data.sources=[{{path: {shards}}}]", "--run-dir", str(tmp_path / "r")]
    done = check("--config", "configs/distill/tiny.yaml", "--world-size", "2", *overrides)
    assert done.returncode == 0, done.stderr
    cfg = load_run_config(REPO / "configs/distill/tiny.yaml", [f"teacher.path={teacher}"])
    per_step = flops.distillation_step_flops(AutoConfig.from_pretrained(teacher),
                                             student_config(cfg, AutoConfig.from_pretrained(teacher)), 8, 32)
    out = done.stdout
    assert "micro-batch 4 per rank x accumulation 1 x 2 ranks = global batch 8" in out
    assert "tokens per step 256; steps 8; tokens in all 2,048" in out
    assert f"FLOPs per step {per_step:.3e}; in all {per_step * 8:.3e}" in out
    assert "layer map (teacher layer -> recursion): 2->1, 4->2" in out
    assert re.search(r"memory per GPU \(estimate, GiB\): [\d.]+ = weights .* optimizer .* teacher .* activations", out)
    assert "unknown" not in out
    assert not (tmp_path / "r").exists()  # nothing written


@pytest.mark.parametrize("attention_kl", ["fused", "materialised"])
def test_the_plans_flops_per_step_are_the_live_ones_and_count_only_what_runs(tiny_world, tmp_path, attention_kl):
    from minialbert import flops
    from minialbert.config import load_run_config
    from minialbert.student import build_student
    from minialbert.teacher import load_teacher

    _, shards = tiny_world
    headless = build_teacher(tmp_path / "headless", mlm_head=False)
    counts, plans = {}, {}
    cases = (("head", tiny_world[0], "null", []), ("headless", headless, "[1,2]", []),
             ("no logits", headless, "[1,2]", ["loss.mlm=0"]))
    for name, teacher_dir, layer_map, extra in cases:
        overrides = [f"teacher.path={teacher_dir}", f"data.sources=[{{path: {shards}}}]", f"teacher.layer_map={layer_map}",
                     f"loss.attention_kl={attention_kl}", "student.init=random", *extra]
        done = check("--config", "configs/distill/tiny.yaml", "--world-size", "2", *overrides)
        assert done.returncode == 0, done.stderr
        planned = float(re.search(r"FLOPs per step ([\d.e+]+);", done.stdout).group(1))
        cfg = load_run_config(REPO / "configs/distill/tiny.yaml", overrides)
        teacher = load_teacher(teacher_dir, cfg.student.num_recursions, cfg.teacher.layer_map)
        live = flops.run_step_flops(cfg, teacher.config, build_student(cfg, teacher).config, 32, teacher.has_mlm_head,
                                    on_cuda=True)  # --check plans GPU nodes (the KL's attention route)
        assert f"{planned:.3e}" == f"{live:.3e}", name  # what --check prints is what the monitor divides by
        counts[name], plans[name] = (live, teacher, cfg), done.stdout
    live, teacher, cfg = counts["headless"]
    student = build_student(cfg, teacher).config
    # The headless teacher runs layers 1..2 of 4 and no MLM head; the student's head still runs (loss.mlm > 0).
    assert live == flops.distillation_step_flops(teacher.config, student, 8, 32, teacher_layers_run=2,
                                                 attention_kl=attention_kl, teacher_logits=False)
    assert live < flops.distillation_step_flops(teacher.config, student, 8, 32, attention_kl=attention_kl)
    # With loss.mlm=0 no term reads logits: the student's head neither runs nor is counted, and it is frozen.
    no_logits = counts["no logits"][0]
    assert no_logits == flops.distillation_step_flops(teacher.config, student, 8, 32, teacher_layers_run=2,
                                                      attention_kl=attention_kl, teacher_logits=False,
                                                      student_logits=False) < live
    assert "frozen (its MLM head" in plans["no logits"] and "frozen (its MLM head" not in plans["headless"]


def test_the_plan_of_a_run_from_a_saved_student_is_that_students(tiny_world, tmp_path):
    """``student.init_from``: the run trains the saved student's architecture, so the plan counts it (not the one
    the student section would build)."""
    from minialbert.config import load_run_config
    from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
    from minialbert.student import student_config
    from minialbert.teacher import read_teacher

    teacher, shards = tiny_world
    overrides = [f"teacher.path={teacher}", f"data.sources=[{{path: {shards}}}]"]
    cfg = load_run_config(REPO / "configs/distill/tiny.yaml", overrides)
    saved = student_config(cfg, read_teacher(teacher, cfg.student.num_recursions).config)
    saved.embedding_size, saved.intermediate_size = 24, 40  # other sizes than the student section's
    model = MiniAlbertForMaskedLM(saved)
    model.save_pretrained(tmp_path / "saved")
    done = check("--config", "configs/distill/tiny.yaml", *overrides, f"student.init_from={tmp_path / 'saved'}")
    assert done.returncode == 0, done.stderr
    assert f"parameters: student {sum(p.numel() for p in model.parameters()):,} (trained)" in done.stdout


@pytest.mark.parametrize("override, message", [
    ("student.hidden_size=48", "student.hidden_size=48 but the teacher needs 32"),
    ("teacher.layer_map=[2,9]", "teacher.layer_map=[2, 9]: expected increasing layers in 1..4"),
])
def test_check_refuses_what_the_run_would_refuse(tiny_world, override, message):
    teacher, shards = tiny_world
    done = check("--config", "configs/distill/tiny.yaml", f"teacher.path={teacher}",
                 f"data.sources=[{{path: {shards}}}]", override)
    assert done.returncode == 2
    assert f"error: {message}" in done.stderr


def test_under_the_deepspeed_launcher_check_plans_for_the_launchers_world_size(tiny_world, tmp_path):
    teacher, shards = tiny_world
    cmd = [str(VENV_BIN / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()), "minialbert/distill.py",
           "--config", "configs/distill/tiny.yaml", "--check", f"teacher.path={teacher}",
           f"data.sources=[{{path: {shards}}}]"]
    done = subprocess.run(cmd, cwd=REPO, env=distill_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("world size 2: micro-batch 4 per rank x accumulation 1") == 1  # rank 0 prints


@pytest.mark.parametrize("override, message", [
    ("student.recursion_delta_rank=500", "student.recursion_delta_rank must be in [0, 384], got 500"),
    ("student.adapter_reduction_factor=1000", "student.adapter_reduction_factor must be in [1, hidden_size=384], "
                                              "got 1000"),
])
def test_a_student_field_the_architecture_refuses_is_one_line_naming_it(override, message):
    """Widths only the teacher's sizes can judge (a delta rank above min(H, I)): one line, exit 2, no traceback."""
    done = check("--config", "configs/distill/cpu.yaml", "--world-size", "2", override)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"error: {message}"], done.stderr
