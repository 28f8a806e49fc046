"""Running `belle train` as a real process, and greedy answers of the result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BELLE = [sys.executable, "-m", "belle.app.cli"]
# one torch thread per process: two OpenMP threads on a shared 2-core machine are slower than one
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def belle(*args, check: bool = True, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([*BELLE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"belle {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def losses(out: Path) -> dict[int, float]:
    """step -> training loss, from OUT/log.jsonl (the last value logged for a step wins)."""
    found = {}
    for line in (Path(out) / "log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            found[record["step"]] = record["loss"]
    return found


def qa_pairs(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["instruction"], r["output"]) for r in rows]


def greedy_exact_match(model, tokenizer, pairs, template: str = "base") -> float:
    """The share of questions whose greedy answer, rendered with the model's training template, is
    exactly the trained answer."""
    import torch

    from belle.app.templates import ChatMessage
    from belle.training.encode import Encoder

    encoder = Encoder(tokenizer, template, 512)
    model.eval()
    hits = 0
    with torch.no_grad():
        for question, answer in pairs:
            ids = encoder.prompt_ids([ChatMessage("user", question)])
            out = model.generate(torch.tensor([ids]), max_new_tokens=40, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
            hits += tokenizer.decode(out[0][len(ids):], skip_special_tokens=True) == answer
    return hits / len(pairs)
