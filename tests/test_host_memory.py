"""minialbert.host_memory: with glibc, a freed activation's pages are reused by the next step's allocation of it
(no page faults), where glibc's thresholds as it starts give them back at the end of a step and fault them in
again. (glibc then raises its thresholds as blocks are freed, which saves some of this, not reliably: the paper
shape's step still took ~33,000 faults.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, resource, sys
import torch
import ctypes
from minialbert.host_memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, reuse_freed_memory
if sys.argv[1] == "on":
    applied = reuse_freed_memory()
else:  # glibc as it starts (128 KiB thresholds), held there: what its dynamic thresholds fall back to
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    applied = not (mallopt(M_MMAP_THRESHOLD, 128 << 10) and mallopt(M_TRIM_THRESHOLD, 128 << 10))
def faults_of_one_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    # a step's activations: ten of 8 MB alive at once, then all freed
    held = [torch.empty(8 << 20, dtype=torch.uint8).fill_(1) for _ in range(10)]
    del held
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [faults_of_one_step() for _ in range(8)]  # the first steps pay for their memory either way
print(json.dumps({"applied": applied, "faults": faults[3:]}))
"""


def step_faults(setting: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, setting], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_activation_is_reused_without_page_faults():
    default, reused = step_faults("off"), step_faults("on")
    pages = 10 * (8 << 20) // 4096
    assert reused["applied"] is True and default["applied"] is False
    assert max(reused["faults"]) < pages // 20, reused  # its pages were kept and reused
    assert min(default["faults"]) > pages // 2, default  # glibc's start-up thresholds: 80 MB faulted in every step
