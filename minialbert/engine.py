"""The only DeepSpeed user in training: DeepSpeed config from the run config, initialize, save/load, consolidate.

The JSON file (``configs/ds/*.json``) holds engine mechanics: the ZeRO stage, offload, fp16 loss-scaling
details. Everything an experiment decides — batch sizes, precision, optimizer, schedule, clipping — comes from
the run config and is written into the DeepSpeed config here; a JSON value that contradicts it is an error.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from data_prep.files import atomic_folder, stale_temporaries

from . import dist
from .config import ConfigError, OptimConfig, RunConfig, offloads_optimizer
from .lamb import Lamb, Piece
from .param_groups import weight_decay_groups

# Keys the run config owns: (DeepSpeed key, how to describe the run-config source).
_OWNED = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (train.micro_batch_size x world size)",
    "gradient_clipping": "optim.max_grad_norm",
}


def accumulation_steps(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches per rank per optimizer step; an error names the fields and what would work."""
    micro, total = cfg.train.micro_batch_size, cfg.train.global_batch_size
    if total % (micro * world_size):
        worlds = [n for n in range(1, total // micro + 1) if (total // micro) % n == 0] if total % micro == 0 else []
        micros = [m for m in range(1, total // world_size + 1) if total % (m * world_size) == 0]
        raise ConfigError(
            f"train.global_batch_size={total} is not a multiple of train.micro_batch_size ({micro}) x world size "
            f"({world_size}); with micro-batch {micro} the world sizes that work are "
            f"{', '.join(map(str, worlds)) or 'none'}; at world size {world_size} set train.micro_batch_size to one "
            f"of {', '.join(map(str, micros)) or 'none (the global batch is smaller than the world)'}"
        )
    return total // (micro * world_size)


def build_ds_config(cfg: RunConfig, ds_json: str | Path, world_size: int, on_cuda: bool) -> dict:
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
    accum_dtype = base.get("data_types", {}).get("grad_accum_dtype")
    if cfg.train.precision == "bf16" and accum_dtype not in (None, "fp32"):
        raise ConfigError(f"{ds_json}: data_types.grad_accum_dtype={accum_dtype!r}: bf16 runs accumulate "
                          f"gradients in fp32 (bf16 sums of micro-batches lose precision)")
    for prec in ("bf16", "fp16"):
        enabled = base.get(prec, {}).get("enabled")
        if enabled not in (None, "auto") and bool(enabled) != (cfg.train.precision == prec):
            raise ConfigError(f"{ds_json}: {prec}.enabled={enabled} contradicts train.precision={cfg.train.precision!r}")
    zero = base.get("zero_optimization", {})
    offload = offloads_optimizer(base)
    if int(zero.get("stage", 0)) == 0 and cfg.train.precision == "bf16":
        # Without ZeRO, DeepSpeed's bf16 path keeps bf16 gradients (it rejects fp32 accumulation at stage 0).
        raise ConfigError(f"{ds_json}: ZeRO stage 0 with train.precision='bf16': DeepSpeed would sum micro-batch "
                          f"gradients in bf16; use train.precision=fp32 (or fp16), or configs/ds/zero1.json")
    config = dict(base)
    config.update(owned)
    config["bf16"] = {**base.get("bf16", {}), "enabled": cfg.train.precision == "bf16"}
    config["fp16"] = {**base.get("fp16", {}), "enabled": cfg.train.precision == "fp16"}
    if cfg.train.precision == "bf16":
        # Micro-batch gradients summed in fp32: ZeRO-1 through DeepSpeed's BF16 optimizer, ZeRO-2 in a separate
        # fp32 buffer, ZeRO-3 always does (DeepSpeed's stage-3 partitions accumulate in fp32).
        config["data_types"] = {**base.get("data_types", {}), "grad_accum_dtype": "fp32"}
    if cfg.optim.name == "lamb":
        # LAMB is our own torch optimizer (initialize), stepped by ZeRO over its flat partitions; it is right under
        # every stage because it is told how they map onto the model's tensors (minialbert/lamb.py).
        config["zero_allow_untested_optimizer"] = True
        config["zero_force_ds_cpu_optimizer"] = False  # CPU offload steps it on the CPU copies
        config.setdefault("steps_per_print", 10**9)
        config.setdefault("wall_clock_breakdown", False)
        return config
    opt_params = {
        "lr": cfg.optim.lr,
        "betas": list(cfg.optim.betas),
        "eps": cfg.optim.eps,
        "weight_decay": cfg.optim.weight_decay,
        "adam_w_mode": True,
    }
    if not on_cuda and not offload:
        # CPU without offload: torch's foreach AdamW (DeepSpeed's fused Adam is a CUDA kernel; CPU offload
        # uses DeepSpeed's CPU Adam). On GPU DeepSpeed picks its fused Adam where it can be built.
        opt_params.update(torch_adam=True, foreach=True)
    elif on_cuda and not offload and not fused_adam_buildable():
        # No CUDA compiler for DeepSpeed's fused Adam (a bare image with torch): torch's fused AdamW, the same
        # update in one kernel; initialize says so.
        opt_params.update(torch_adam=True, fused=True)
    config["optimizer"] = {"type": "AdamW", "params": opt_params}
    config.setdefault("steps_per_print", 10**9)  # the run's own monitor logs; keep DeepSpeed quiet
    config.setdefault("wall_clock_breakdown", False)
    return config


def fused_adam_buildable() -> bool:
    """DeepSpeed's fused Adam on CUDA is a kernel built when DeepSpeed was installed (DS_BUILD_FUSED_ADAM=1) or
    compiled at first use, which needs nvcc under torch's CUDA_HOME."""
    try:
        from deepspeed.git_version_info import installed_ops

        if installed_ops.get("fused_adam"):
            return True
    except ImportError:  # DeepSpeed is not installed here: --check plans a run for another machine
        pass
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None


def lr_multiplier(warmup_steps: int, total_steps: int):
    """The learning rate of optimizer step k (0-based) as a share of ``optim.lr``: linear warm-up from 0 over
    ``warmup_steps`` steps, then linear decay to 0 at ``total_steps`` (Hugging Face's linear schedule, which the
    original used, and DeepSpeed's WarmupDecayLR, which raises a warm-up below 2 to 2 and rejects 0).
    Warm-up 0 starts at the full rate."""
    def multiplier(k: int) -> float:
        if k < warmup_steps:
            return k / warmup_steps
        return max(0.0, (total_steps - k) / max(1, total_steps - warmup_steps))

    return multiplier


def initialize(model: nn.Module, ds_config: dict, optim: OptimConfig, max_steps: int, load_universal: bool = False):
    """Wrap the student in a DeepSpeed engine: AdamW or LAMB over two parameter groups (no weight decay, and for
    LAMB no trust ratio, on biases and LayerNorm weights) and the warm-up/decay schedule, both saved in and
    restored from its checkpoints. ``load_universal``: the checkpoint to resume is a universal conversion (the
    rank count changed)."""
    import deepspeed

    if load_universal:
        ds_config = {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}

    _import_muon_without_compiling()
    use_the_interpreters_ninja()
    clear_stale_build_locks()
    # Lets a checkpoint be converted to DeepSpeed's universal format and resumed on another rank count.
    model.universal_checkpoint_info = {"universal_checkpoint_version": 0.4}
    groups = weight_decay_groups(model, optim.weight_decay)
    lamb = None
    if optim.name == "lamb":
        for group, matrices in zip(groups, (True, False)):
            group["trust_ratio"] = matrices
        lamb = Lamb(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps, weight_decay=optim.weight_decay,
                    max_trust_ratio=optim.max_trust_ratio, await_layout=True)
    engine, _, _, _ = deepspeed.initialize(
        model=model, model_parameters=groups, optimizer=lamb, config=ds_config,
        lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_multiplier(optim.warmup_steps, max_steps)),
    )
    if ds_config.get("optimizer", {}).get("params", {}).get("fused"):
        dist.print0("DeepSpeed's fused Adam cannot be built here (no nvcc under CUDA_HOME): torch's fused AdamW steps")
    if lamb is not None:
        lamb.set_layout(*lamb_layout(engine, model))
    _keep_grad_norm_without_zero(engine)
    _unlink_shared_memory_segment()
    return engine


def _keep_grad_norm_without_zero(engine) -> None:
    """fp32 without ZeRO (stage 0): DeepSpeed clips the full gradients itself and keeps no norm; keep the norm before
    clipping, as the ZeRO optimizers report it, so that every stage logs ``train/grad_norm``."""
    if engine.zero_optimization() or engine.fp16_enabled() or engine.bfloat16_enabled():
        return
    from deepspeed.runtime.utils import clip_grad_norm_

    params = [p for p in engine.module.parameters() if p.requires_grad]
    max_norm = engine.gradient_clipping()

    def keep(norm) -> None:
        engine._global_grad_norm = float(norm)

    if max_norm > 0:
        engine.clip_fp32_gradients = lambda: keep(clip_grad_norm_(parameters=params, max_norm=max_norm, mpu=engine.mpu))
    else:
        engine.basic_optimizer.register_step_pre_hook(
            lambda *_: keep(torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])))


def lamb_layout(engine, model: nn.Module):
    """(layout, number of tensors, all-reduce or None) for ``Lamb.set_layout``: for every tensor the optimizer
    steps, which pieces of which of the model's trainable tensors it holds, read from the DeepSpeed wrapper that
    owns the fp32 master weights."""
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer
    from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    index = {id(p): t for t, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    opt, rank = engine.optimizer, dist.rank()

    def whole(pairs):  # (stepped tensor, model tensor) of the same shape
        return [(stepped, [Piece(index[id(p)], 0, p.numel())]) for stepped, p in pairs]

    def flat_partition(fp32, params, flat, partition_size, part):
        # ``params`` are views into ``flat`` (DeepSpeed re-points them there); ``fp32`` is the fp32 copy of
        # flat[part * partition_size : (part + 1) * partition_size], the share this rank steps.
        lo = part * partition_size
        pieces = []
        for p in params:
            start = (p.data_ptr() - flat.data_ptr()) // flat.element_size()
            a, b = max(start, lo), min(start + p.numel(), lo + partition_size)
            if a < b:
                pieces.append(Piece(index[id(p)], a - lo, b - a))
        return fp32, pieces

    if isinstance(opt, Lamb):  # fp32 without ZeRO: every rank steps the whole model
        return whole((p, p) for g in opt.param_groups for p in g["params"]), len(index), None
    if isinstance(opt, FP16_UnfusedOptimizer):  # fp16 without ZeRO: whole fp32 copies
        return whole((c, p) for cs, ps in zip(opt.fp32_groups, opt.fp16_groups) for c, p in zip(cs, ps)), len(index), None
    if isinstance(opt, FP16_Optimizer):  # fp16 without ZeRO: one fp32 flat per group, whole on every rank
        layout = [flat_partition(fp32, params, flat, flat.numel(), 0)
                  for fp32, params, flat in zip(opt.fp32_groups_flat, opt.fp16_groups, opt.fp16_groups_flat)]
        return layout, len(index), None
    if isinstance(opt, BF16_Optimizer):  # bf16 ZeRO-1
        layout = [flat_partition(fp32, params, flat, flat.numel() // dist.world_size(), rank)
                  for fp32, params, flat in zip(opt.fp32_groups_flat_partition, opt.bf16_groups, opt.bf16_groups_flat)]
        return layout, len(index), dist.all_reduce_sum
    if isinstance(opt, DeepSpeedZeroOptimizer):  # ZeRO-1/2, offload included
        layout = [flat_partition(fp32, params, flat, size, rank) for fp32, params, flat, size in zip(
            opt.single_partition_of_fp32_groups, opt.round_robin_bit16_groups, opt.bit16_groups_flat,
            opt.partition_size)]
        return layout, len(index), dist.all_reduce_sum
    if isinstance(opt, DeepSpeedZeroOptimizer_Stage3):
        # Each sub-group's fp32 flat holds every parameter's partition in turn: ``partition_numel`` elements,
        # this rank's being elements [rank * partition_numel, ...) of the parameter (the last one padded).
        layout = []
        for fp32, params in zip(opt.fp32_partitioned_groups_flat, opt.fp16_groups):
            offset, pieces = 0, []
            for p in params:
                size = p.partition_numel()
                length = min(size, p.ds_numel - rank * size)
                if length > 0:
                    pieces.append(Piece(index[id(p)], offset, length))
                offset += size
            layout.append((fp32, pieces))
        return layout, len(index), dist.all_reduce_sum
    raise ConfigError(f"optim.name='lamb': DeepSpeed chose {type(opt).__name__}, whose partitions LAMB cannot map "
                      f"onto the model's tensors; use one of configs/ds/zero[0-3].json")


def use_the_interpreters_ninja() -> None:
    """DeepSpeed builds and checks its CPU ops with whichever ``ninja`` comes first on PATH. The virtual
    environment has its own (DeepSpeed requires the PyPI package) and a machine often has a system one
    (Debian's ninja-build); each discards the other's build log, so a start with the environment's bin folder on
    PATH (the ``deepspeed`` launcher) and one without it (``python -m minialbert.distill``, a Slurm job of a
    shell that did not activate it) each rebuild the ops from scratch: ~35 s on 2 cores, every rank waiting.
    Put the interpreter's own bin folder first on PATH when it holds ninja, as activating the environment does."""
    bin_dir = str(Path(sys.executable).parent)
    if (Path(bin_dir) / "ninja").is_file() and os.environ.get("PATH", "").split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


STALE_BUILD_LOCK_S = 600  # DeepSpeed's CPU ops build in well under a minute


def clear_stale_build_locks(now: float | None = None) -> list[Path]:
    """DeepSpeed builds its CPU ops (the shared-memory all-reduce, CPU Adam) with torch's JIT loader at the first
    start on a machine and checks them at every start, behind a lock file that torch waits on forever. A rank
    killed meanwhile (a preemption, scancel, Ctrl-C during the start) leaves the lock behind, and every later run
    on the machine would hang before its first step. A lock older than any build is removed, and said so."""
    from torch.utils.cpp_extension import get_default_build_root

    named = os.environ.get("TORCH_EXTENSIONS_DIR")
    roots = [Path(named)] if named else list(Path(get_default_build_root()).glob("py*"))
    now = time.time() if now is None else now
    removed = []
    for lock in (lock for root in roots for lock in root.glob("*/lock")):
        try:
            if now - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
                lock.unlink()
                removed.append(lock)
                print(f"removed {lock}: a build lock left by a process killed while building (older than "
                      f"{STALE_BUILD_LOCK_S // 60} minutes)", file=sys.stderr, flush=True)
        except FileNotFoundError:  # another rank removed it first
            pass
    return removed


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def _import_muon_without_compiling() -> None:
    """DeepSpeed imports its Muon optimizer module whenever it builds a ZeRO engine, only to check the optimizer's
    type, and that module's ``@torch.compile`` decorators import torch's inductor there and then: seconds of CPU
    on every rank at every start (docs/performance.md) for an optimizer this project never runs. Import it once
    with those decorators deferred to their first call, which a run never makes; everything else about the module
    is as DeepSpeed wrote it."""
    if MUON_MODULE in sys.modules:
        return
    from deepspeed.runtime import compiler

    eager = compiler.compile
    compiler.compile = lambda: _compile_on_first_call
    try:
        importlib.import_module(MUON_MODULE)
    finally:
        compiler.compile = eager


def _compile_on_first_call(fn):
    compiled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal compiled
        if compiled is None:
            compiled = torch.compile(fn)
        return compiled(*args, **kwargs)

    return call


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
        for stale in stale_temporaries(out):  # left by a conversion that was killed
            shutil.rmtree(stale, ignore_errors=True)
        try:
            with atomic_folder(out, replace=True) as tmp:
                done = subprocess.run(
                    [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                     str(checkpoint_root / tag), "--output_folder", str(tmp), "--num_extract_workers", "1",
                     "--num_merge_workers", "1"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                    env={**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")},
                )
                if done.returncode:
                    reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
                    raise RuntimeError(f"{checkpoint_root / tag}: conversion to DeepSpeed's universal format failed "
                                       f"({reason})")
        finally:
            # The converter also writes a `latest_universal` pointer beside its output, naming the temporary folder.
            (checkpoint_root / "latest_universal").unlink(missing_ok=True)
    return out_tag


def has_partitions(folder: Path) -> bool:
    """Whether a checkpoint holds ZeRO partitions (stages 1-3, and bf16's optimizer), rather than stage 0's one
    full copy."""
    return any(Path(folder).glob("*optim_states.pt"))


def _bf16_optimizer_weights(folder: Path) -> dict[str, torch.Tensor] | None:
    """The fp32 weights of a checkpoint written by DeepSpeed's BF16_Optimizer (bf16 with ZeRO-1), which
    ``zero_to_fp32`` refuses ("not a zero checkpoint"): each rank's file holds its slice of every parameter group
    (``single_partition_of_fp32_groups``) and where each named parameter's fragment lies in it
    (``param_slice_mappings``); fragments joined in rank order give the parameter. Parameters the optimizer does
    not hold (frozen ones) come from the module's weights. None when the checkpoint is not of that layout."""
    files = sorted(Path(folder).glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"),
                   key=lambda f: int(f.name.split("_")[4]))
    if not files:
        return None
    states = [torch.load(f, map_location="cpu", weights_only=False)["optimizer_state_dict"] for f in files]
    if "param_slice_mappings" not in states[0] or "zero_stage" in states[0]:
        return None
    module = torch.load(Path(folder) / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    pieces: dict[str, list[torch.Tensor]] = {}
    for state in states:  # rank order
        for flat, mapping in zip(state["single_partition_of_fp32_groups"], state["param_slice_mappings"]):
            for name, fragment in mapping.items():
                pieces.setdefault(name, []).append(flat.narrow(0, fragment.start, fragment.numel))
    weights = {k: v.float() for k, v in module.items()}
    for name, parts in pieces.items():
        weights[name] = torch.cat(parts).view(module[name].shape).clone()
    return weights


def consolidated_state_dict(checkpoint_root: Path, tag: str, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The full fp32 weights of a checkpoint (no engine needed): gathered from the partitions of ZeRO-1/2/3 (and of
    bf16 runs), or, without ZeRO (stage 0), read from the one file rank 0 wrote. An fp16 run without ZeRO keeps its
    fp32 master weights in the optimizer's state, in the order of the parameter groups: ``model`` (the student's
    architecture) tells that order; without it the fp16 weights are returned, widened."""
    folder = Path(checkpoint_root) / tag
    if has_partitions(folder):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        bf16_optimizer = _bf16_optimizer_weights(folder)
        if bf16_optimizer is not None:
            return bf16_optimizer
        return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_root), tag=tag)
    path = folder / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: neither ZeRO partitions (*optim_states.pt) nor {path.name}")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    weights = {k: v.float() for k, v in saved["module"].items()}
    optimizer = saved.get("optimizer") or {}
    masters = optimizer.get("fp32_groups_flat") or optimizer.get("fp32_groups")
    if masters is None or model is None:
        return weights
    model.load_state_dict(weights, strict=True)
    with torch.no_grad():
        for group, master in zip(weight_decay_groups(model, 0.0), masters):
            pieces = master if isinstance(master, list) else torch.split(master, [p.numel() for p in group["params"]])
            for p, piece in zip(group["params"], pieces):
                p.copy_(piece.view(p.shape))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def loss_scale(engine) -> float | None:
    """The fp16 dynamic loss scale (None in bf16/fp32)."""
    if not engine.fp16_enabled():
        return None
    return float(getattr(engine.optimizer, "cur_scale", getattr(engine.optimizer, "loss_scale", 0.0)))


def grad_norm(engine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")
