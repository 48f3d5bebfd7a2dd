"""Every ``python -m minialbert.finetune`` command in the README's and docs' code blocks parses: its subcommand,
flags and choices exist as written (a renamed or removed flag fails here the day it happens)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from minialbert.finetune.__main__ import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def code_block_lines(text: str):
    """The lines of the shell code blocks (```bash, ```sh or plain ```), continuations joined."""
    fence, block = None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:].strip(), []
                continue
            if fence in ("", "bash", "sh"):
                yield from "\n".join(block).replace("\\\n", " ").split("\n")
            fence = None
        elif fence is not None:
            block.append(line)


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCUMENTS:
        for line in code_block_lines(doc.read_text()):
            line = line.split(" #")[0].strip()
            if line.startswith("python -m minialbert.finetune "):
                found.append((f"{doc.name}: {line[:80]}", shlex.split(line)[3:]))
    return found


COMMANDS = documented_commands()


def test_the_documents_show_finetune_commands():
    assert len(COMMANDS) >= 10 and any("--distill-from" in argv for _, argv in COMMANDS)


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_documented_finetune_command_parses(argv):
    build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown flag or a bad choice
