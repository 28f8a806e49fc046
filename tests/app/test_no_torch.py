"""app/ must run on a phone: it may not import the training stack, not even lazily."""

import ast
from pathlib import Path

FORBIDDEN = {"torch", "transformers", "peft", "accelerate", "datasets", "trl"}
APP = Path(__file__).resolve().parents[2] / "app"


def test_app_sources_never_import_the_training_stack():
    offenders = []
    for path in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.relative_to(APP.parent)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
    assert len(list(APP.rglob("*.py"))) > 10  # the scan did look at the app
