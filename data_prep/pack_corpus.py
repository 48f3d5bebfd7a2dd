"""Pack a corpus into tokenised Arrow shards (see docs/data.md).

One process, all units, then the merge (a local run):
    python -m data_prep.pack_corpus --format jsonl --input 'wiki/*.jsonl' --tokenizer TEACHER_DIR \\
        --out shards/wiki --seq-len 256 --stride 128 --max-windows 10 --seed 0 --workers 8
As a Slurm array (one unit per task), then the merge as a dependent job:
    N=$(python -m data_prep.pack_corpus ... --list-units)
    sbatch --array=0-$((N-1)) --wrap "python -m data_prep.pack_corpus ... --unit-index \\$SLURM_ARRAY_TASK_ID"
    sbatch --dependency=afterok:JOBID --wrap "python -m data_prep.merge_manifests shards/wiki"
Re-running the same command skips finished units and redoes unfinished ones.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time

from data_prep.shards import (FORMAT_VERSION, SPLITS, SplitWriter, merge_manifests, publish_unit, read_json,
                              remove_unit_leftovers, unit_record_path, warning_lines, write_error, write_json_atomic)
from data_prep.sources import FORMATS, check_units, plan_units, read_unit
from data_prep.units import DataPrepError, SourceReport, Unit


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep.pack_corpus", description=__doc__.splitlines()[0])
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--input", required=True, nargs="+", help="files, quoted globs, a save_to_disk folder or a hub name")
    p.add_argument("--tokenizer", required=True, help="local folder of the teacher's tokenizer")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=("windows", "packed"), default="windows")
    p.add_argument("--seq-len", type=int, default=256, help="row length including special tokens")
    p.add_argument("--stride", type=int, default=None,
                   help="tokens between consecutive window starts (default: seq-len / 2, the paper's 128 for 256)")
    p.add_argument("--max-windows", type=int, default=10, help="at most k windows per document (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-fraction", type=float, default=0.01, help="share of documents held out")
    p.add_argument("--text-field", default="text", help="jsonl/parquet/hf field holding the document text")
    p.add_argument("--hf-config", default=None, help="hub dataset config, e.g. 20231101.en")
    p.add_argument("--hf-split", default="train")
    p.add_argument("--shard-rows", type=int, default=65536, help="rows per Arrow shard file")
    p.add_argument("--slice-mb", type=float, default=256, help="cut uncompressed text/jsonl files into units this big")
    p.add_argument("--workers", type=int, default=1, help="processes, each packing whole units")
    p.add_argument("--strict", action="store_true",
                   help="a bad record, a broken file or a file giving no documents is fatal instead of a warning")
    p.add_argument("--list-units", action="store_true", help="print the number of units and exit")
    p.add_argument("--unit-index", type=int, default=None, help="pack only this unit (a Slurm array task); no merge")
    p.add_argument("--units-per-task", type=int, default=1, help="with --unit-index I: pack units I*K .. I*K+K-1")
    p.add_argument("--no-progress", action="store_true")
    return p


def validate(args: argparse.Namespace) -> None:
    if args.stride is None:
        args.stride = args.seq_len // 2
    if args.seq_len < 8:
        raise DataPrepError(f"--seq-len {args.seq_len}: expected at least 8")
    if args.max_windows < 0:
        raise DataPrepError(f"--max-windows {args.max_windows}: expected >= 0")
    if not 0.0 <= args.validation_fraction < 1.0:
        raise DataPrepError(f"--validation-fraction {args.validation_fraction}: expected in [0, 1)")
    if args.shard_rows < 1 or args.workers < 1 or args.units_per_task < 1:
        raise DataPrepError("--shard-rows, --workers and --units-per-task must be positive")


def make_plan(args: argparse.Namespace, units: list[Unit], tok_info: dict, fingerprint: str) -> dict:
    """Everything that determines the output bytes; processes writing into one --out must agree on it."""
    return {
        "format_version": FORMAT_VERSION,
        "format": args.format, "mode": args.mode, "text_field": args.text_field,
        "seq_len": args.seq_len, "stride": args.stride, "max_windows": args.max_windows, "seed": args.seed,
        "validation_fraction": args.validation_fraction, "shard_rows": args.shard_rows,
        "tokenizer": {"name": os.path.basename(os.path.normpath(args.tokenizer)), "fingerprint": fingerprint,
                      **tok_info},
        "units": [u.to_json() for u in units],
    }


def write_plan(out_dir: str, plan: dict) -> None:
    """Create plan.json, or check that the existing one (from another task or an earlier run) agrees."""
    path = os.path.join(out_dir, "plan.json")
    if os.path.isfile(path):
        old = read_json(path)
        if old != plan:
            diff = sorted(k for k in set(old) | set(plan) if old.get(k) != plan.get(k))
            raise DataPrepError(f"{path}: made with other settings (differs in: {', '.join(diff)}); "
                                f"use a new --out or the same settings")
        return
    for sub in ("units", *SPLITS):
        try:
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        except OSError as e:
            raise write_error(os.path.join(out_dir, sub), e) from e
    write_json_atomic(path, plan)


# Worker state: one Windower per process, built by _init_worker (fork keeps the parent's imports).
_windower = None
_progress = None


def build_windower(args: argparse.Namespace):
    from data_prep.windowing import Windower, load_fast_tokenizer

    return Windower(load_fast_tokenizer(args.tokenizer), args.seq_len, args.stride, args.max_windows, args.seed,
                    args.mode, args.validation_fraction)


def _init_worker(args: argparse.Namespace, progress, windower=None) -> None:
    global _windower, _progress
    _windower = windower if windower is not None else build_windower(args)
    _progress = progress


def pack_unit(args: argparse.Namespace, unit: Unit) -> dict:
    """Pack one unit into shards and publish it; returns its totals. Nothing is published on failure."""
    out = args.out
    remove_unit_leftovers(out, unit.index)
    report = SourceReport(unit, strict=args.strict)
    writers = {s: SplitWriter(out, s, unit.index, args.shard_rows, _windower.info["id_dtype"]) for s in SPLITS}
    windows = tokens = docs_since = tokens_since = 0
    try:
        docs = read_unit(args.format, unit, report, args.text_field)
        for split, row, docs_done in _windower.rows(docs, unit.key_hash):
            if row is None:
                docs_since += docs_done
                if docs_since >= 256:
                    _report_progress(docs_since, tokens_since)
                    docs_since = tokens_since = 0
                continue
            writers[split].add(row, _windower.word_starts(row))
            windows += 1
            tokens += len(row)
            tokens_since += len(row)
        shards = [shard for s in SPLITS for shard in writers[s].close()]
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    _report_progress(docs_since, tokens_since)
    totals = {"units": 1, "docs_read": report.docs_read, "docs_skipped": sum(report.docs_skipped.values()),
              "bad_records": report.bad_record_count, "warnings": len(report.warnings), "rows": windows,
              "tokens": tokens}
    publish_unit(out, unit.index, shards, report.to_json(), totals)
    return totals


def _report_progress(docs: int, tokens: int) -> None:
    with _progress.get_lock():
        _progress[0] += docs
        _progress[1] += tokens


def _pack_unit_in_worker(job):
    args, unit = job
    try:
        return unit.index, pack_unit(args, unit), None
    except DataPrepError as e:
        return unit.index, None, str(e)


def run_units(args: argparse.Namespace, units: list[Unit], windower=None) -> None:
    """Pack the given units (skipping finished ones) with a progress bar showing docs/s and tokens/s."""
    pending = [u for u in units if not os.path.isfile(unit_record_path(args.out, u.index))]
    if len(pending) < len(units):
        print(f"{len(units) - len(pending)} of {len(units)} units already finished; skipping them", file=sys.stderr)
    if not pending:
        return
    ctx = mp.get_context("fork")
    progress = ctx.Array("q", 2)  # [documents, tokens] packed so far, summed over workers
    bar = _ProgressBar(progress, len(pending), disable=args.no_progress)
    try:
        if args.workers == 1:
            _init_worker(args, progress, windower)
            for unit in pending:
                pack_unit(args, unit)
                bar.unit_done()
            return
        # Workers use one Rust thread each; more would oversubscribe the cores the processes already fill.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        try:
            with ctx.Pool(min(args.workers, len(pending)), _init_worker, (args, progress)) as pool:
                for _index, _totals, error in pool.imap_unordered(_pack_unit_in_worker, [(args, u) for u in pending]):
                    if error is not None:
                        raise DataPrepError(error)
                    bar.unit_done()
        except BaseException:
            # Leaving the pool terminated (and joined) the workers mid-unit; remove what their units left.
            for unit in pending:
                if not os.path.isfile(unit_record_path(args.out, unit.index)):
                    remove_unit_leftovers(args.out, unit.index)
            raise
    finally:
        bar.close()


class _ProgressBar:
    """tqdm bar over units whose postfix shows docs/s and tokens/s from the shared counters."""

    def __init__(self, progress, total_units: int, disable: bool):
        from tqdm import tqdm

        self.progress, self.t0 = progress, time.perf_counter()
        self.bar = tqdm(total=total_units, unit="unit", file=sys.stderr, disable=disable, mininterval=1.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(1.0):
            self._update()

    def _update(self) -> None:
        dt = max(time.perf_counter() - self.t0, 1e-9)
        docs, tokens = self.progress[0], self.progress[1]
        self.bar.set_postfix_str(f"{docs / dt:,.0f} docs/s {tokens / dt:,.0f} tokens/s", refresh=True)

    def unit_done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._update()
        self.bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        validate(args)
        units = plan_units(args.format, args.input, int(args.slice_mb * (1 << 20)), args.hf_config, args.hf_split)
        if args.list_units:
            print(len(units))
            return 0
        from data_prep.fingerprint import tokenizer_fingerprint

        # Everything that can be checked is checked before plan.json is written, so that a corrected command
        # is not refused as "made with other settings". Building a Windower checks seq_len/stride against the
        # tokenizer; a single-process run then uses it (workers build their own after the fork).
        windower = build_windower(args)
        mine = units
        if args.unit_index is not None:
            first = args.unit_index * args.units_per_task
            if not 0 <= first < len(units):
                tasks = -(-len(units) // args.units_per_task)
                raise DataPrepError(f"--unit-index {args.unit_index}: expected 0..{tasks - 1}")
            mine = units[first:first + args.units_per_task]
        check_units(args.format, mine, args.text_field)
        write_plan(args.out, make_plan(args, units, windower.info, tokenizer_fingerprint(args.tokenizer)))
        run_units(args, mine, windower)
        if args.unit_index is not None:
            return 0
        manifest = merge_manifests(args.out)
    except DataPrepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = manifest["totals"]
    print(f"{args.out}: {t['docs_read']} documents, {t['train_rows']} train + {t['validation_rows']} validation rows, "
          f"{t['train_tokens'] + t['validation_tokens']} tokens, {t['bad_records']} bad records, "
          f"{t.get('warnings', 0)} warnings", file=sys.stderr)  # older unit records have no warnings count
    for line in warning_lines(manifest):
        print(line, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
