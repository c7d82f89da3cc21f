"""peftkit.allocator: glibc's mmap threshold fixed at 256 KiB, so activation-sized blocks get their own mappings
(returned to the system on free) even after larger blocks were freed; the user's own glibc setting wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Frees a 4 MiB block (glibc raises its dynamic threshold above it), then allocates 512 KiB blocks and counts how
# many of them got their own mapping (mallinfo2().hblks: glibc >= 2.33).
SCRIPT = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
from peftkit.allocator import return_freed_memory
applied = return_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc.mallinfo2.restype = MallInfo2
libc.free(libc.malloc(4 << 20))
mapped = libc.mallinfo2().hblks
blocks = [libc.malloc(512 << 10) for _ in range(20)]
print(json.dumps({"applied": applied, "own_mappings": libc.mallinfo2().hblks - mapped}))
"""


def run_script(env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "PEFTKIT_MALLOC")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], env={**env, **env_extra}, capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_activation_sized_blocks_get_their_own_mappings():
    assert run_script({}) == {"applied": True, "own_mappings": 20}
    # glibc's default: after the 4 MiB free its threshold rose above 512 KiB, so they come from the heap
    assert run_script({"PEFTKIT_MALLOC": "glibc"}) == {"applied": False, "own_mappings": 0}


@pytest.mark.skipif(sys.platform != "linux", reason="glibc only")
def test_the_users_own_glibc_setting_wins():
    assert run_script({"MALLOC_MMAP_THRESHOLD_": str(8 << 20)}) == {"applied": False, "own_mappings": 0}
