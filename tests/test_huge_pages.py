"""Transparent huge pages for torch's large CPU tensors (unetseg.use_huge_pages in runner.h)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
KERNEL_HAS_THP = THP_SETTING.exists() and "[never]" not in THP_SETTING.read_text()
needs_thp = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not KERNEL_HAS_THP,
    reason="needs Linux with transparent huge pages (madvise or always)",
)


def run_python(code: str, **env: str) -> str:
    environment = {**os.environ, **env}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# A tensor allocated before unetseg (by torch's own allocator) and one after; both are touched, the
# second one's huge pages counted in /proc/self/smaps, then both freed.
PROBE = """
import torch
before = torch.ones(64 << 20, dtype=torch.uint8)
import unetseg
from unetseg import _C
after = torch.ones(64 << 20, dtype=torch.uint8)
start, end = after.data_ptr(), after.data_ptr() + after.numel()
huge_kb, inside = 0, False
for line in open('/proc/self/smaps'):  # the mappings that overlap the tensor (advice splits them)
    head = line.split()[0]
    if '-' in head and ':' not in head:
        low, high = (int(x, 16) for x in head.split('-'))
        inside = low < end and start < high
    elif inside and head == 'AnonHugePages:':
        huge_kb += int(line.split()[1])
del before, after
print(_C.use_huge_pages(), huge_kb)
"""


@needs_thp
def test_large_tensors_get_huge_pages_and_tensors_from_before_free_alike():
    installed, huge_kb = run_python(PROBE).split()
    assert installed == "True"
    assert int(huge_kb) >= 32 << 10  # most of the 64 MiB: the kernel may not find every huge page


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the probe reads /proc/self/smaps")
def test_opting_out_leaves_torchs_allocator_alone():
    installed, _ = run_python(PROBE, UNETSEG_HUGE_PAGES="0").split()
    assert installed == "False"


# Tensors of 40 sizes from 4 to 160 MiB, each written and freed: 3.2 GiB handed out, of which the
# cache of freed blocks keeps the latest up to 256 MiB (here the 160 MiB one: with the 156 MiB one
# it would be over).
BOUNDED = """
for mib in range(4, 164, 4):
    t = torch.ones(mib << 20, dtype=torch.uint8)
    del t
"""


def mib_kept(script: str) -> int:
    """The MiB a child process's resident memory grew by while it ran `script` (torch and unetseg
    loaded before), checking that unetseg's allocator was installed there."""
    start = "import torch, unetseg\n"
    start += "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
    report = "print(unetseg._C.use_huge_pages(), (rss() - base) >> 20)\n"
    installed, kept = run_python(start + "base = rss()\n" + script + report).split()
    assert installed == "True"
    return int(kept)


@needs_thp
def test_freed_blocks_kept_for_reuse_stay_within_the_cache_budget():
    assert 150 <= mib_kept(BOUNDED) <= 256 + 32  # the last block; the budget and a few MiB of other allocations


# A 64 MiB tensor freed (kept by the cache), then a 320 MiB one, more than the whole budget: that
# one is unmapped at once and the 64 MiB block stays cached, instead of the large one pushing it out.
LARGER_THAN_BUDGET = """
t = torch.ones(64 << 20, dtype=torch.uint8)
del t
t = torch.ones(320 << 20, dtype=torch.uint8)
del t
"""


@needs_thp
def test_a_block_larger_than_the_cache_budget_does_not_empty_the_cache():
    assert 60 <= mib_kept(LARGER_THAN_BUDGET) <= 64 + 32  # the 64 MiB block, and a few MiB of other allocations
