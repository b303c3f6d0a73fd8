"""Core of the EXAONE multi-LoRA serving tool: the typed deployment spec, model facts and capacity planning."""

PROJECT = "exaone-lora"
