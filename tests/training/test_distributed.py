"""The distributed path for real: `accelerate launch` starts two CPU processes that train over gloo
(DDP), and they must give the loss curve of one process with twice the batch."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from conftest import OVERFIT
from train_helpers import ENV, belle, losses

ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch"]
CONFIGS = Path(__file__).resolve().parents[2] / "training" / "accelerate"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: str, *args, timeout: int = 600) -> subprocess.CompletedProcess:
    """The repository's accelerate config, with two processes and no mixed precision (CPU)."""
    cmd = [*ACCELERATE, "--config_file", CONFIGS / config, "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, env=ENV)


TRAIN = ["--method", "full", "--data", OVERFIT, "--max-steps", 6, "--logging-steps", 1, "--lr", 1e-3,
         "--threads", 1, "--save-steps", 3]


def test_two_processes_train_as_one_with_twice_the_batch(tiny_llama, tmp_path):
    proc = _launch("cpu_ddp.yaml", "-m", "belle.training", "--base", tiny_llama, *TRAIN, "--batch-size", 2, "-o", tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ddp" / "checkpoint-3" / "rng_state_1.pth").is_file()  # two ranks really ran
    belle("train", "--base", tiny_llama, *TRAIN, "--batch-size", 4, "-o", tmp_path / "one")
    ddp, one = losses(tmp_path / "ddp"), losses(tmp_path / "one")
    assert sorted(ddp) == sorted(one) == [1, 2, 3, 4, 5, 6]
    assert max(abs(ddp[s] - one[s]) for s in one) < 1e-4
    assert one[6] < one[1]


def test_fsdp_on_cpus_is_refused_not_silently_ignored(tiny_llama, tmp_path):
    """accelerate shards with FSDP only on GPUs; on CPUs it would run plain DDP and say nothing."""
    proc = _launch("fsdp.yaml", "-m", "belle.training", "--base", tiny_llama, *TRAIN,
                   "--batch-size", 2, "-o", tmp_path / "fsdp")
    assert proc.returncode != 0
    assert "belle: error: FSDP needs GPUs" in proc.stderr
