"""belle.training: fine-tuning on BELLE-style instruction data (transformers + peft)."""
