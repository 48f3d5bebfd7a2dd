"""The house layering, read from the imports: model code knows nothing of DeepSpeed, ranks or launchers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("minialbert", "data_prep", "launchers") for p in (REPO / d).rglob("*.py"))
# module prefix -> the only files allowed to import it
OWNERS = {
    "deepspeed": {"minialbert/engine.py"},
    "torch.distributed": {"minialbert/dist.py"},
    "submitit": {"launchers/submit_distill.py", "launchers/submit_prep.py"},
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("prefix", sorted(OWNERS))
def test_only_the_owner_imports(prefix):
    offenders = [
        str(p.relative_to(REPO)) for p in SOURCES
        if str(p.relative_to(REPO)) not in OWNERS[prefix]
        and any(n == prefix or n.startswith(prefix + ".") for n in _imports(p))
    ]
    assert not offenders, f"{prefix} imported outside {sorted(OWNERS[prefix])}: {offenders}"


def test_the_student_loads_without_the_training_code():
    imports = _imports(REPO / "minialbert" / "modeling_minialbert.py")
    assert not {n for n in imports if n.startswith(("deepspeed", "torch.distributed", "minialbert.distill"))}


# A run dir's names are spelled in one module; the training step is in one module.
RUN_DIR_NAMES = ('"checkpoints"', '"metrics.jsonl"', '"tensorboard"', '"config.yaml"', '"student_config"', '"export"')
CODE = sorted(p for d in ("minialbert", "data_prep", "launchers", "bench") for p in (REPO / d).rglob("*.py"))


def test_only_run_dir_spells_the_names_in_a_run_dir():
    offenders = [f"{p.relative_to(REPO)}: {name}" for p in CODE if p.name != "run_dir.py"
                 for name in RUN_DIR_NAMES if name in p.read_text()]
    assert not offenders, f"run-dir names outside minialbert/run_dir.py: {offenders}"


def test_only_the_step_module_steps_an_engine():
    offenders = [str(p.relative_to(REPO)) for p in CODE if p.name != "step.py"
                 and any(call in p.read_text() for call in ("engine.backward(", "engine.step("))]
    assert not offenders, f"the training step written outside minialbert/step.py: {offenders}"


def test_one_home_for_the_offload_check_and_the_preempted_exit_code():
    offload = [str(p.relative_to(REPO)) for p in CODE if "offload_optimizer" in p.read_text()]
    assert offload == ["minialbert/config.py"], f"offload read outside config.offloads_optimizer: {offload}"
    exit_code = [str(p.relative_to(REPO)) for p in CODE if "EXIT_PREEMPTED = " in p.read_text()]
    assert exit_code == ["minialbert/distill.py"], f"the preempted exit code defined outside distill.py: {exit_code}"
    from minialbert.distill import EXIT_PREEMPTED  # the shell script cannot import it: it spells the same number

    assert f"\nEXIT_PREEMPTED={EXIT_PREEMPTED}\n" in (REPO / "slurm" / "pretrain.sh").read_text()
