"""`belle build`: one recipe file from base model and data to a 4-bit GGUF in the app's model list."""
