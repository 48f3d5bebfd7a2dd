"""Run monitoring on rank 0: TensorBoard (``RUN_DIR/tensorboard``), ``metrics.jsonl``, throughput and MFU, and
the progress bar.

Other ranks get a monitor that does nothing. A resumed run continues the same step axis: ``metrics.jsonl`` is cut
back to the checkpoint's step and TensorBoard purges events after it, so no step is missing or doubled.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import torch

from data_prep.files import write_text_atomic

from .losses import RECORD_KEYS, TERMS
from .run_dir import RunDir, read_metrics


def peak_memory_gb(device: torch.device) -> float:
    """Peak GPU memory of this process, or its peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after ``last_step`` (logged by a run that died before its next checkpoint), and a last line
    torn by a kill in the middle of its write."""
    if not path.is_file():
        return
    keep = [json.dumps(record) for record in read_metrics(path) if record["step"] <= last_step]
    write_text_atomic(path, "".join(line + "\n" for line in keep))


class Monitor:
    def __init__(self, run_dir: str | Path, start_step: int, hparams: dict, flops_per_step: float | None,
                 peak_flops: float | None, world_size: int, device: torch.device, max_steps: int | None = None,
                 log_every: int = 0):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = RunDir(run_dir)
        self.metrics_path = self.run_dir.metrics
        truncate_metrics(self.metrics_path, start_step)
        self.metrics = self.metrics_path.open("a")
        # purge_step hides events at steps > start_step written by a run that crashed after its checkpoint.
        self.writer = SummaryWriter(str(self.run_dir.tensorboard), purge_step=start_step + 1)
        self.flops_per_step, self.peak_flops, self.world_size, self.device = flops_per_step, peak_flops, world_size, device
        if start_step == 0:
            self._write_hparams(hparams)
        self.last_time = time.perf_counter()
        self.max_steps, self.log_every = max_steps, log_every
        self.progress = None
        if max_steps is not None:
            from tqdm import tqdm

            self.progress = tqdm(total=max_steps, initial=start_step, desc="distill", unit="step", dynamic_ncols=True)

    def _write_hparams(self, hparams: dict) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(flat, {"loss/total": 0.0})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in flat.items()), 0)

    def restart_clock(self) -> None:
        self.last_time = time.perf_counter()

    def log_step(self, step: int, record: dict, per_recursion: dict[str, list[float]], samples: int,
                 epoch: int) -> OSError | None:
        """Write one optimizer step; returns the error when the metrics could not be written (a full disk), so
        that the ranks can stop together. ``record`` has loss_*, lr, grad_norm, tokens (cumulative), step_tokens,
        loss_scale."""
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        try:
            written = self._write(step, dict(record), per_recursion, samples, epoch)
        except OSError as err:
            return err
        if self.log_every and step % self.log_every == 0:
            self._print_line(written)
        return None

    def _print_line(self, record: dict) -> None:
        from tqdm import tqdm

        mfu = f"; MFU {record['mfu']:.2f}" if "mfu" in record else ""
        line = (f"step {record['step']}/{self.max_steps or '?'}: loss {record['loss']:.4f}; lr {record['lr']:.2e}; "
                f"{record['tokens_per_s']:,.0f} tokens/s{mfu}; {record['tokens']:,} tokens seen")
        try:
            # On the progress bar's stream: a job log that merges stdout and stderr gets whole lines, never a bar
            # character cut in two.
            tqdm.write(line, file=sys.stderr)
        except OSError:  # the log's disk is full: the line is lost, metrics.jsonl has the step
            pass

    def _write(self, step: int, record: dict, per_recursion: dict[str, list[float]], samples: int, epoch: int) -> dict:
        now = time.perf_counter()
        dt, self.last_time = max(now - self.last_time, 1e-9), now
        tokens_per_s = record.pop("step_tokens") / dt
        record.update(step=step, tokens_per_s=tokens_per_s, samples_per_s=samples / dt, epoch=epoch,
                      peak_mem_gb=peak_memory_gb(self.device))
        if self.flops_per_step:
            achieved = self.flops_per_step / dt
            record["tflops"] = achieved / 1e12
            if self.peak_flops:
                record["mfu"] = achieved / (self.peak_flops * self.world_size)
        w = self.writer
        for term, key in zip(TERMS, RECORD_KEYS):
            w.add_scalar(f"loss/{term}", record[key], step)
        for name, values in per_recursion.items():
            for i, v in enumerate(values):
                w.add_scalar(f"loss/{name}_recursion_{i}", v, step)
        w.add_scalar("train/lr", record["lr"], step)
        w.add_scalar("train/grad_norm", record["grad_norm"], step)
        if record.get("loss_scale") is not None:
            w.add_scalar("train/loss_scale", record["loss_scale"], step)
        w.add_scalar("perf/samples_per_s", record["samples_per_s"], step)
        w.add_scalar("perf/tokens_per_s", tokens_per_s, step)
        if "tflops" in record:
            w.add_scalar("perf/tflops", record["tflops"], step)
        if "mfu" in record:
            w.add_scalar("perf/mfu", record["mfu"], step)
        w.add_scalar("mem/peak_gb", record["peak_mem_gb"], step)
        w.add_scalar("data/epoch", epoch, step)
        # Flushed every step, events first: a live TensorBoard is current, and a step in metrics.jsonl is on
        # disk in the event file too (a resumed run purges both after its checkpoint).
        w.flush()
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        return record

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        self.writer.close()
        self.metrics.close()


class NullMonitor:
    """What ranks other than 0 hold: every call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def make_monitor(is_rank0: bool, *args, **kwargs) -> Monitor | NullMonitor:
    return Monitor(*args, **kwargs) if is_rank0 else NullMonitor()
