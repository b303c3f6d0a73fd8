"""The AMX permission line of the CPU vLLM venv: installed idempotently, and in force in every new interpreter."""

from __future__ import annotations

import subprocess
from pathlib import Path

from exaone_lora.local.processes import vllm_python
from service import cpu_amx

# Ask the kernel which extended states this process may use (ARCH_GET_XCOMP_PERM = 0x1022): bit 18 is AMX tile data.
PERMISSION_PROBE = ("import ctypes; m = ctypes.c_ulong(); ctypes.CDLL(None).syscall(158, 0x1022, ctypes.byref(m)); "
                    "print(m.value >> 18 & 1)")


def _cpu_has_amx() -> bool:
    flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return "amx_tile" in flags.split()


def test_install_writes_the_line_once(tmp_path: Path) -> None:
    assert cpu_amx.install(tmp_path) is True
    assert (tmp_path / cpu_amx.PTH_NAME).read_text() == cpu_amx.PTH_LINE
    assert cpu_amx.install(tmp_path) is False
    (tmp_path / cpu_amx.PTH_NAME).write_text("import os\n")  # an edited or older line is put back
    assert cpu_amx.install(tmp_path) is True and (tmp_path / cpu_amx.PTH_NAME).read_text() == cpu_amx.PTH_LINE
    assert sorted(p.name for p in tmp_path.iterdir()) == [cpu_amx.PTH_NAME]


def test_the_vllm_venv_asks_for_amx_in_every_interpreter() -> None:
    python = vllm_python()
    site = subprocess.run([str(python), "-c", cpu_amx.SITE_PACKAGES_PROBE], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert (Path(site) / cpu_amx.PTH_NAME).read_text() == cpu_amx.PTH_LINE
    granted = subprocess.run([str(python), "-c", PERMISSION_PROBE], capture_output=True, text=True, check=True).stdout
    # On an AMX CPU a fresh interpreter (as vLLM's spawned worker is) already holds the permission; without the
    # line it does not, and vLLM's first forward pass dies with SIGILL. Elsewhere the request is refused, harmlessly.
    assert granted.strip() == ("1" if _cpu_has_amx() else "0")
    bare = subprocess.run([str(python), "-S", "-c", PERMISSION_PROBE], capture_output=True, text=True, check=True).stdout
    assert bare.strip() == "0"  # -S skips site (and so the .pth): the permission really comes from the line
