"""The EXAONE-shaped checkpoint factory every test and benchmark uses (nothing is downloaded)."""

from exaone_lora.checkpoints.factory import Checkpoint, adapter_config, make_adapter, make_checkpoint

__all__ = ["Checkpoint", "adapter_config", "make_adapter", "make_checkpoint"]
