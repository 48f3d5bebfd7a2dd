import sys
from pathlib import Path

import pytest
import torch

# Test helpers (reference_cases, tiny_models, ...) import as top-level modules. Never import "conftest" itself:
# tests/slurm has one too, and the two would shadow each other.
sys.path.insert(0, str(Path(__file__).parent))

import minialbert  # noqa: E402,F401  (registers the Auto classes)
from tiny_models import tiny_config  # noqa: E402


@pytest.fixture
def tiny():
    return tiny_config


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: intra-op threads only add contention on a shared 2-core machine. Module scope, so that a module
    asking for it (``pytestmark = pytest.mark.usefixtures("one_thread")``) has it before its training fixtures run."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session", autouse=True)
def _reclaim_leaked_deepspeed_segments():
    """DeepSpeed's CPU all-reduce segments (/dev/shm, ~69 MB of RAM per rank) outlive runs killed during start-up,
    and every run made before minialbert unlinked them. Free those no live process maps, so that a machine's
    leftovers cannot starve this session of memory."""
    leaked = set(Path("/dev/shm").glob("deepspeed_allreduce_buffer_*"))
    for maps in Path("/proc").glob("[0-9]*/maps") if leaked else ():
        try:
            lines = maps.read_text().splitlines()
        except OSError:  # the process exited while we looked
            continue
        leaked -= {Path(line.split(maxsplit=5)[-1]) for line in lines if "/dev/shm/" in line}
    for segment in leaked:
        segment.unlink(missing_ok=True)
    yield
