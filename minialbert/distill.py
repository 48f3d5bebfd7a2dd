"""Distil a frozen encoder teacher (BERT, RoBERTa, XLM-R, ELECTRA, DeBERTa, ModernBERT: docs/teachers.md) into a
recursive MiniALBERT student on a DeepSpeed ZeRO engine.

One CPU box (2 ranks) or one GPU node:
    deepspeed [--num_gpus 2] minialbert/distill.py --deepspeed configs/ds/zero2.json [--config configs/distill/general.yaml]
        [--run-dir DIR] [--max-steps N] [--no-resume] [section.key=value ...]
    (on CPU: DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 minialbert/distill.py ...)
One process, no launcher:
    python -m minialbert.distill --config configs/distill/tiny.yaml ...
Slurm, many nodes:
    sbatch --nodes 4 slurm/pretrain.sh --config configs/distill/general.yaml --run-dir runs/general

The plan for N ranks, without starting anything (batch arithmetic, tokens, FLOPs, memory, layer map):
    python -m minialbert.distill --config configs/distill/general.yaml --check --world-size 8

Without --config the embedded default runs: the offline demo (the installed all-MiniLM-L6-v2 teacher and the
shards the README's first command prepares). A run dir holding a checkpoint resumes from it. Exit codes:
0 finished, 75 stopped by SIGTERM/SIGUSR1/Ctrl-C after saving a checkpoint (run again to resume; a second Ctrl-C
aborts at once), 2 bad configuration or input data (the message names the field or file), 74 a write failed (e.g.
no space left on device; the previous checkpoint is intact).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script (``deepspeed minialbert/distill.py``): import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import copy
import os
import signal

import torch

from minialbert import checkpoint as ckpt
from minialbert import dist, flops
from minialbert import engine as engine_setup
from minialbert.config import DEMO_DATA_COMMAND, ConfigError, RunConfig, dump_run_config, load_run_config
from minialbert.data import DataError
from minialbert.host_memory import reuse_freed_memory
from minialbert.host_threads import restart_with_spinning_threads
from minialbert.losses import EAGER
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from minialbert.monitor import make_monitor
from minialbert.plan import make_plan
from minialbert.precision import DTYPES, resolve_precision
from minialbert.resolved_run import ResolvedRun, resolve_run
from minialbert.run_dir import RunDir
from minialbert.step import train_step
from minialbert.student import build_student
from minialbert.teacher import Teacher, TeacherError, describe_family, load_weights

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved on SIGTERM/SIGUSR1/SIGINT; run the same command to resume
EXIT_CONFIG = 2
EXIT_IO = 74  # EX_IOERR: a checkpoint, metrics or the export could not be written (e.g. no space left on device)
DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ds" / "zero2.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minialbert/distill.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--deepspeed", metavar="PATH", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON (ZeRO stage, offload)")
    p.add_argument("--config", metavar="YAML", help="run config (default: the embedded offline demo)")
    p.add_argument("--run-dir", help="where checkpoints, logs and the export go (overrides run_dir)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps)")
    p.add_argument("--no-resume", action="store_true", help="refuse a non-empty run dir instead of resuming")
    p.add_argument("--restart", action="store_true",
                   help="start over in a run dir that holds a run: remove its checkpoints, metrics, TensorBoard "
                        "logs and export first (says what it removes)")
    p.add_argument("--check", action="store_true", help="print the plan for the world size and exit; starts nothing")
    p.add_argument("--world-size", type=int, metavar="N",
                   help="ranks to plan for with --check (default: the launcher's WORLD_SIZE, else 1)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    return p.parse_intermixed_args(argv)  # overrides may come before, between or after the flags


def resolve_config(args: argparse.Namespace) -> RunConfig:
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    return load_run_config(args.config, overrides)


def check_inputs(cfg: RunConfig, ds_json: str, embedded_default: bool) -> None:
    """Missing paths stop the run before any work."""
    cfg.teacher_path()  # raises when there is none
    if not Path(ds_json).is_file():
        raise ConfigError(f"--deepspeed {ds_json}: file not found")
    for i, source in enumerate(cfg.data.sources):
        if not (Path(source.path) / "manifest.json").is_file():
            hint = f"; make them with: {DEMO_DATA_COMMAND}" if embedded_default else ""
            raise ConfigError(f"data.sources[{i}].path={source.path!r}: no packed shards there (manifest.json missing){hint}")


def print_plan(cfg: RunConfig, ds_json: str, world_size: int | None) -> int:
    """--check: the plan for ``world_size`` ranks on rank 0's stdout (under a launcher every rank checks)."""
    world = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise ConfigError(f"--world-size {world}: expected a positive integer")
    cfg = copy.deepcopy(cfg)
    cfg.train.precision = resolve_precision(cfg.train.precision, torch.device("cuda"))  # plans are for GPUs
    plan = make_plan(resolve_run(cfg, ds_json, world, on_cuda=True, need_teacher=False))
    if os.environ.get("RANK", "0") == "0":
        print("\n".join(plan.lines()), flush=True)
    return 0


def resolve_auto_precision(cfg: RunConfig, device: torch.device) -> None:
    if cfg.train.precision == "auto":
        cfg.train.precision = resolve_precision("auto", device)
        why = "native bf16" if cfg.train.precision == "bf16" else "no native bf16: emulated bf16 is slower than fp32"
        dist.print0(f"train.precision=auto: {cfg.train.precision} on this {device.type} ({why})")


def prepare_run_dir(cfg: RunConfig, no_resume: bool, restart: bool) -> RunDir:
    run_dir = RunDir(cfg.run_dir)
    if no_resume and restart:
        raise ConfigError("--no-resume and --restart: choose one")
    if run_dir.path.exists() and not run_dir.path.is_dir():
        raise ConfigError(f"run_dir={str(run_dir)!r}: a file, expected a folder (new or holding a run)")
    if no_resume and run_dir.path.exists() and any(run_dir.path.iterdir()):
        raise ConfigError(f"--no-resume: run dir {run_dir} is not empty; choose another --run-dir or drop --no-resume")
    return run_dir


def build_stream(cfg: RunConfig, teacher: Teacher, ctx: dist.DistContext):
    from minialbert.data import ShardStream, tokenizer_fingerprint
    from minialbert.teacher_families import max_positions

    stream = ShardStream(
        [(s.path, s.weight) for s in cfg.data.sources], split="train", micro_batch_size=cfg.train.micro_batch_size,
        rank=ctx.rank, world_size=ctx.world_size, seed=cfg.train.seed, mlm_probability=cfg.data.mlm_probability,
        whole_word_mask=cfg.data.whole_word_mask, vocab_size=teacher.config.vocab_size,
        expected_fingerprint=tokenizer_fingerprint(cfg.teacher_path()),
        expected_tokenizer=f"the teacher's tokenizer {cfg.teacher_path()}",
    )
    if stream.seq_len > max_positions(teacher.config):
        raise DataError(f"{cfg.data.sources[0].path}: rows of {stream.seq_len} tokens exceed the teacher's "
                        f"{max_positions(teacher.config)} positions (max_position_embeddings="
                        f"{teacher.config.max_position_embeddings})")
    return stream


class StopFlag:
    """Set by SIGTERM / SIGUSR1 / SIGINT; the loop finishes its step, saves and exits 75. A second SIGINT (Ctrl-C)
    aborts at once."""

    def __init__(self):
        self.set = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.set:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.set = True

    def ignore_from_now(self) -> None:
        """The run is over (checkpoint saved): later signals must not turn its exit code into 143. Python puts back
        the default action of the signals it handles when the interpreter shuts down; ignored ones stay ignored."""
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_IGN)


def build_run(run: ResolvedRun, restart: bool, ctx: dist.DistContext, run_dir: Path):
    """Teacher, student, data stream and the checkpoint to resume from; errors name the field or file."""
    cfg = run.cfg
    # The student's init reads the teacher's exact (fp32) weights; the teacher then runs in the run's dtype.
    teacher = load_weights(run.teacher, torch.float32, ctx.device)
    torch.manual_seed(cfg.train.seed)  # the same initial student on every rank
    student = build_student(cfg, teacher, run.student)
    teacher = teacher.to(dtype=DTYPES[cfg.train.precision])
    stream = build_stream(cfg, teacher, ctx)
    resume = ckpt.prepare_resume(run_dir, cfg, restart=restart)
    if resume:
        stream.check_state(resume.rank_state["stream"])  # other data: one line now, not a traceback later
    return teacher, student, stream, resume


def announce(run: ResolvedRun, ctx: dist.DistContext) -> None:
    teacher = run.teacher
    dist.print0(describe_family(teacher.family, teacher.config.model_type))
    if not teacher.has_mlm_head:
        dist.print0("teacher has no MLM head: output-logit distillation is off")
    dist.print0(f"teacher layers {teacher.layer_map} -> student recursions 1..{len(teacher.layer_map)}; "
                f"world {ctx.world_size} x micro {run.cfg.train.micro_batch_size} x accumulation {run.accumulation}")


def build_loss_kernels(run: ResolvedRun, teacher: Teacher, student: MiniAlbertForMaskedLM, seq_len: int,
                       ctx: dist.DistContext):
    """train.compile: the loss terms compiled (and proven at the run's shapes) or eager, and with them the teacher's
    layers (frozen, on CPUs); one line says which."""
    from minialbert.compiled import compile_teacher, loss_kernels, teacher_compile_wanted

    cfg = run.cfg
    logits = (cfg.loss.student_logits_used(teacher.has_mlm_head), cfg.loss.teacher_logits_used(teacher.has_mlm_head))
    kernels = loss_kernels(cfg.train.compile, cfg.train.precision, DTYPES[cfg.train.precision], ctx.device,
                           cfg.train.micro_batch_size, seq_len, student.config.hidden_size,
                           student.config.num_attention_heads, student.config.vocab_size,
                           logits, cfg.loss.temperature)
    if kernels is not EAGER:
        wanted, why = teacher_compile_wanted(cfg.train.compile, cfg.train.max_steps)
        dist.print0("train.compile: " + (compile_teacher(teacher, cfg.train.micro_batch_size, seq_len, logits[1],
                                                         cfg.loss.attention_kl == "fused", ctx.device)
                                         if wanted else "the teacher eager") + f" ({why})")
    return kernels


def start_monitor(run: ResolvedRun, ctx: dist.DistContext, run_dir: RunDir, step: int,
                  student: MiniAlbertForMaskedLM):
    """Rank 0 writes the resolved config and the student's config, and gets the monitor (MFU: the run's FLOPs per
    step over the peak, train.peak_tflops or measured); the other ranks get one that does nothing."""
    cfg = run.cfg
    peak = cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else flops.measure_peak_flops(
        DTYPES[cfg.train.precision], ctx.device, seconds=0.25, repeats=2)
    if ctx.is_rank0:
        run_dir.path.mkdir(parents=True, exist_ok=True)
        run_dir.config.write_text(dump_run_config(cfg))
        student.config.save_pretrained(run_dir.student_config)
    return make_monitor(ctx.is_rank0, run_dir.path, step, _hparams(run, ctx), run.flops_per_step, peak,
                        ctx.world_size, ctx.device, max_steps=cfg.train.max_steps, log_every=cfg.train.log_every)


def export_student(ctx: dist.DistContext, run_dir: RunDir, step: int) -> int:
    """Rank 0 writes the Hugging Face folder of the last checkpoint to RUN_DIR/export; returns the exit code."""
    code = 0
    if ctx.is_rank0:
        from minialbert.export import export_checkpoint

        try:
            out = export_checkpoint(run_dir.path, ckpt.tag_for(step), run_dir.export, replace=True)
            print(f"exported the student to {out}", flush=True)
        except OSError as err:
            report_error(f"error: {err}")
            code = EXIT_IO
    dist.barrier()
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        if args.check:
            return print_plan(cfg, args.deepspeed, args.world_size)
        check_inputs(cfg, args.deepspeed, embedded_default=args.config is None)
        run_dir = prepare_run_dir(cfg, args.no_resume, args.restart)
    except (ConfigError, TeacherError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    ctx = dist.init_distributed()
    if ctx.device.type == "cpu":
        reuse_freed_memory()  # each step's activations on memory the process holds: no page faults every step
    stop = StopFlag()
    resolve_auto_precision(cfg, ctx.device)
    try:
        run = resolve_run(cfg, args.deepspeed, ctx.world_size, on_cuda=ctx.device.type == "cuda")
        teacher, student, stream, resume = build_run(run, args.restart, ctx, run_dir.path)
    except (ConfigError, TeacherError, DataError, ckpt.CheckpointError) as err:
        if ctx.is_rank0:
            print(f"error: {err}", file=sys.stderr)
        dist.destroy()
        return EXIT_CONFIG
    announce(run, ctx)
    kernels = build_loss_kernels(run, teacher, student, stream.seq_len, ctx)
    engine = engine_setup.initialize(student, run.ds_config, cfg.optim, cfg.train.max_steps,
                                     load_universal=bool(resume and resume.universal))
    step, tokens = ckpt.restore(engine, run_dir.path, resume, stream, cfg.train.seed)  # the last RNG use before step 1
    monitor = start_monitor(run, ctx, run_dir, step, student)
    checkpointer = ckpt.Checkpointer(engine, run_dir.path, cfg, stream)
    batches = iter(stream)
    try:
        while step < cfg.train.max_steps:
            result = train_step(engine, teacher, batches, run.accumulation, cfg.loss, ctx, kernels)
            step, tokens = step + 1, tokens + result.tokens
            record = {**result.record, "tokens": tokens, "step_tokens": result.tokens}
            log_error = monitor.log_step(step, record, result.per_recursion, cfg.train.global_batch_size, stream.epoch)
            saved, stopping = checkpointer.after_step(step, tokens, stop.set, log_error)
            if saved:
                monitor.restart_clock()  # the save's time is not the next step's
            if stopping:
                dist.print0(f"stopped by signal at step {step}; checkpoint saved; exit {EXIT_PREEMPTED} "
                            f"(run again to resume)")
                return _finish(stop, monitor, EXIT_PREEMPTED)
    except ckpt.CheckpointError as err:
        if ctx.is_rank0:
            report_error(f"\nerror: {err}")
        return _finish(stop, monitor, EXIT_IO)
    monitor.close()
    return _finish(stop, None, export_student(ctx, run_dir, step))


def report_error(line: str) -> None:
    """The run's last word on a failed write. When the log itself is on the full disk it cannot be written: the
    exit code (74) still tells."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def _finish(stop: StopFlag, monitor, code: int) -> int:
    stop.ignore_from_now()
    if monitor is not None:
        try:
            monitor.close()
        except OSError:  # nothing more can be written (a full disk): what was flushed stays
            pass
    dist.destroy()
    return code


def _hparams(run: ResolvedRun, ctx: dist.DistContext) -> dict:
    cfg, flat = run.cfg, {}
    for section in ("student", "loss", "optim", "train"):
        for k, v in getattr(cfg, section).__dict__.items():
            flat[f"{section}.{k}"] = v
    flat.update({"teacher.path": cfg.teacher_path(), "world_size": ctx.world_size, "accumulation": run.accumulation})
    return flat


if __name__ == "__main__":
    if "--check" not in sys.argv:  # a run, not its plan: a CPU run's OpenMP workers spin (host_threads.py)
        restart_with_spinning_threads()
    code = main()
    # Everything of the run is written and closed by now. The interpreter's teardown can still abort (SIGABRT,
    # "terminate called without an active exception": a C++ thread of the communication stack destroyed while
    # joinable), which turned a saved preemption's exit 75 into 134, and could do the same to 0 or to 74 after a
    # full disk: leave at once with the run's own code.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            pass
    os._exit(code)
