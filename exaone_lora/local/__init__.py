"""The embedded local stack: real servers on this machine (CPU vLLM, Azurite, a systemd test host)."""
