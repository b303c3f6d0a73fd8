"""Let the CPU build of vLLM use Intel AMX: a start-up line in its venv that asks Linux for the tile permission.

Since Linux 5.16 a process must ask (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`) before its first
AMX tile instruction, or that instruction raises SIGILL. vLLM 0.32's CPU build picks its AMX kernels whenever
the CPU has AMX (`torch.cpu._is_amx_tile_supported()`, Sapphire Rapids and later) but never asks, so on such a
machine its worker process dies at the first forward pass (`Worker proc VllmWorker-0 died unexpectedly (exit
code: -4)`); a plain torch matmul works because oneDNN asks for itself. A `.pth` line runs at every interpreter
start in the venv, the engine's spawned worker processes included, and asks. Where there is no AMX (or no
x86-64) the call fails without effect and the kernels vLLM picks do not use AMX either. The CUDA build is not
concerned: its linear layers and attention run on the GPU.

    python -m service.cpu_amx          # installs the line into the running interpreter's venv (idempotent)
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

PTH_NAME = "exaone_lora_amx_permission.pth"
# syscall 158 = arch_prctl on x86-64; 0x1023 = ARCH_REQ_XCOMP_PERM; 18 = XFEATURE_XTILEDATA.
PTH_LINE = 'import ctypes, platform; platform.machine() == "x86_64" and ctypes.CDLL(None).syscall(158, 0x1023, 18)\n'
# Run with a venv's python: prints where that venv's `.pth` files go.
SITE_PACKAGES_PROBE = "import sysconfig; print(sysconfig.get_paths()['purelib'])"


def install(site_packages: Path) -> bool:
    """Write the line into `site_packages` unless it is there already; True when it changed."""
    target = site_packages / PTH_NAME
    if target.is_file() and target.read_text() == PTH_LINE:
        return False
    tmp = target.with_suffix(".tmp")
    tmp.write_text(PTH_LINE)
    tmp.replace(target)  # a Python starting meanwhile reads the old file or the new one, never half of it
    return True


if __name__ == "__main__":
    folder = Path(sysconfig.get_paths()["purelib"])
    print(f"AMX permission line {'installed in' if install(folder) else 'already in'} {folder / PTH_NAME}")
