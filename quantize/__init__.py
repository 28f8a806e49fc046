"""belle.quantize: HF -> GGUF conversion, quantization and fidelity evaluation."""
