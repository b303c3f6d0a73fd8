"""Training pipeline: ShareGPT data, a data generator, PEFT LoRA SFT, export/publish, a domain-quality check."""

DOMAINS: tuple[str, ...] = ("medical", "legal", "customer_support", "code")
