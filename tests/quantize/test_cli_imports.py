"""The quantize command modules are imported by every `belle` start: they must stay light."""

import subprocess
import sys


def test_cli_modules_import_nothing_heavy():
    code = ("import sys, belle.quantize.cli_convert, belle.quantize.cli_quantize, belle.quantize.cli_eval; "
            "print(sorted(m for m in ('torch', 'transformers', 'llama_cpp', 'gguf', 'safetensors', 'numpy') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
