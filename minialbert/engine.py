"""The only DeepSpeed user in training: DeepSpeed config from the run config, initialize, save/load, consolidate.

The JSON file (``configs/ds/*.json``) holds engine mechanics: the ZeRO stage, offload, fp16 loss-scaling
details. Everything an experiment decides — batch sizes, precision, optimizer, schedule, clipping — comes from
the run config and is written into the DeepSpeed config here; a JSON value that contradicts it is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from . import dist
from .config import RunConfig, ConfigError

# Keys the run config owns: (DeepSpeed key, how to describe the run-config source).
_OWNED = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (train.micro_batch_size x world size)",
    "gradient_clipping": "optim.max_grad_norm",
}


def accumulation_steps(cfg: RunConfig, world_size: int) -> int:
    per_step = cfg.train.micro_batch_size * world_size
    if cfg.train.global_batch_size % per_step:
        raise ConfigError(
            f"train.global_batch_size={cfg.train.global_batch_size} is not a multiple of train.micro_batch_size "
            f"({cfg.train.micro_batch_size}) x world size ({world_size})"
        )
    return cfg.train.global_batch_size // per_step


def build_ds_config(cfg: RunConfig, ds_json: str | Path, world_size: int, on_cuda: bool, load_universal: bool = False) -> dict:
    """The DeepSpeed config: the JSON's mechanics plus the run config's decisions (contradictions are errors)."""
    ds_json = Path(ds_json)
    try:
        base = json.loads(ds_json.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{ds_json}: DeepSpeed config not found") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{ds_json}: not valid JSON ({err})") from None
    accum = accumulation_steps(cfg, world_size)
    owned = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": cfg.optim.max_grad_norm,
    }
    for key, value in owned.items():
        if key in base and base[key] != "auto" and base[key] != value:
            raise ConfigError(
                f"{ds_json}: {key}={base[key]} contradicts the run config ({_OWNED[key]} gives {value}); "
                f"remove it from the JSON or change the run config"
            )
    for key in ("optimizer", "scheduler"):
        if key in base:
            raise ConfigError(f"{ds_json}: '{key}' is set by the run config's optim section; remove it from the JSON")
    for prec in ("bf16", "fp16"):
        enabled = base.get(prec, {}).get("enabled")
        if enabled not in (None, "auto") and bool(enabled) != (cfg.train.precision == prec):
            raise ConfigError(f"{ds_json}: {prec}.enabled={enabled} contradicts train.precision={cfg.train.precision!r}")
    zero = base.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    config = dict(base)
    config.update(owned)
    config["bf16"] = {**base.get("bf16", {}), "enabled": cfg.train.precision == "bf16"}
    config["fp16"] = {**base.get("fp16", {}), "enabled": cfg.train.precision == "fp16"}
    opt_params = {
        "lr": cfg.optim.lr,
        "betas": list(cfg.optim.betas),
        "eps": cfg.optim.eps,
        "weight_decay": cfg.optim.weight_decay,
        "adam_w_mode": True,
    }
    if not on_cuda and not offload:
        # CPU without offload: torch's foreach AdamW (DeepSpeed's fused Adam is a CUDA kernel; CPU offload
        # uses DeepSpeed's CPU Adam). On GPU DeepSpeed picks its fused Adam.
        opt_params.update(torch_adam=True, foreach=True)
    config["optimizer"] = {"type": "AdamW", "params": opt_params}
    config["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": cfg.optim.lr,
            "warmup_num_steps": cfg.optim.warmup_steps,
            "total_num_steps": max(cfg.train.max_steps, cfg.optim.warmup_steps + 1),
            "warmup_type": "linear",
        },
    }
    config.setdefault("steps_per_print", 10**9)  # the run's own monitor logs; keep DeepSpeed quiet
    config.setdefault("wall_clock_breakdown", False)
    if load_universal:
        config["checkpoint"] = {**base.get("checkpoint", {}), "load_universal": True}
    return config


def initialize(model: nn.Module, ds_config: dict):
    """Wrap the student in a DeepSpeed engine (optimizer + LR schedule inside)."""
    import deepspeed

    # Lets a checkpoint be converted to DeepSpeed's universal format and resumed on another rank count.
    model.universal_checkpoint_info = {"universal_checkpoint_version": 0.4}
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config
    )
    _unlink_shared_memory_segment()
    return engine


def _unlink_shared_memory_segment() -> None:
    """DeepSpeed's CPU all-reduce op maps one ~69 MB segment per rank in /dev/shm (RAM) and never unlinks it, so
    every run would leave its segments behind until reboot. Once every rank has mapped every peer's segment
    (``initialize`` returned on all ranks: the barrier), each rank unlinks its own name; the memory is then freed
    when the ranks exit, however they exit."""
    env = os.environ
    segment = Path("/dev/shm") / (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{env.get('MASTER_ADDR', '')}_{env.get('MASTER_PORT', '')}_{dist.rank()}"
    )
    dist.barrier()
    segment.unlink(missing_ok=True)


def save_shards(engine, checkpoint_root: Path, tag: str) -> None:
    """Collective: every rank writes its shards of ``checkpoint_root/tag``; the 'latest' pointer is not touched."""
    engine.save_checkpoint(str(checkpoint_root), tag=tag, save_latest=False)


def load_shards(engine, checkpoint_root: Path, tag: str) -> None:
    path, _ = engine.load_checkpoint(str(checkpoint_root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{checkpoint_root / tag}: DeepSpeed could not load this checkpoint")


def convert_to_universal(checkpoint_root: Path, tag: str) -> str:
    """Convert ``tag`` to DeepSpeed's universal format (resumable on any rank count); returns the new tag."""
    out_tag = f"{tag}_universal"
    out = checkpoint_root / out_tag
    if not (out / "zero").is_dir():
        tmp = checkpoint_root / f".{out_tag}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a conversion that was killed
        subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(checkpoint_root / tag),
             "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"],
            check=True, stdout=subprocess.DEVNULL, env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")},
        )
        tmp.rename(out)
        # The converter also writes a `latest_universal` pointer beside its output, naming the temporary folder.
        (checkpoint_root / "latest_universal").unlink(missing_ok=True)
    return out_tag


def consolidated_state_dict(checkpoint_root: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a ZeRO-1/2/3 checkpoint (no engine needed)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root), tag=tag)


def loss_scale(engine) -> float | None:
    """The fp16 dynamic loss scale (None in bf16/fp32)."""
    if not engine.fp16_enabled():
        return None
    return float(getattr(engine.optimizer, "cur_scale", getattr(engine.optimizer, "loss_scale", 0.0)))


def grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")
