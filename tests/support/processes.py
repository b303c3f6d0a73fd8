"""Test-side names for the local servers; the code lives in the package so the demo runs the same."""

from exaone_lora.local.processes import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    INSTALL_HINT,
    REPO,
    Azurite,
    RunningProcess,
    azurite,
    azurite_bin,
    cpu_slot,
    free_port,
    run_process,
    stop_process_group,
    vllm_python,
    vllm_server,
    wait_http,
)

__all__ = [
    "AZURITE_ACCOUNT", "AZURITE_KEY", "INSTALL_HINT", "REPO", "Azurite", "RunningProcess", "azurite", "azurite_bin",
    "cpu_slot", "free_port", "run_process", "stop_process_group", "vllm_python", "vllm_server", "wait_http",
]
