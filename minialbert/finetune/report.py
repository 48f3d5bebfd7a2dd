"""Markdown table across sweeps: one row per (model, mode), one column per task.

    python -m minialbert.finetune report runs/finetune            # every summary.json below, to stdout
    python -m minialbert.finetune report runs/a runs/b --out results.md

The table itself (what a cell shows, how rows and the average are made): ``minialbert.results_table``.
"""

from __future__ import annotations


from data_prep.files import write_text_atomic

from ..results_table import SummaryError, collect, render
from . import InputError


def run_report(args) -> str:
    try:
        table = render(collect(args.paths))
    except SummaryError as err:
        raise InputError(str(err)) from None
    print(table, end="")
    if args.out:
        write_text_atomic(args.out, table)
    return table
