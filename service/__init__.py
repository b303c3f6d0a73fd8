"""Serving: vLLM configuration, adapter validation and registry, gateway, lifecycle, metrics."""
