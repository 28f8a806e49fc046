"""Default thread counts: physical cores for decoding, every logical core for prompt reading."""

import os

from belle.app import threads
from belle.app.engine import Engine, LoadSettings


def test_default_threads_follow_the_cores(monkeypatch):
    monkeypatch.setattr(threads, "performance_cores", lambda: None)
    monkeypatch.setattr(threads, "logical_cores", lambda: 8)
    monkeypatch.setattr(threads.psutil, "cpu_count", lambda logical=True: 4)
    assert threads.default_threads() == (4, 8)  # SMT: one decode thread per core
    monkeypatch.setattr(threads.psutil, "cpu_count", lambda logical=True: None)
    assert threads.default_threads() == (8, 8)  # platform does not say: logical count
    monkeypatch.setattr(threads, "logical_cores", lambda: 2)
    monkeypatch.setattr(threads.psutil, "cpu_count", lambda logical=True: 16)
    assert threads.default_threads() == (2, 2)  # never more than this process may run on
    monkeypatch.setattr(threads, "performance_cores", lambda: 6)
    monkeypatch.setattr(threads, "logical_cores", lambda: 20)
    assert threads.default_threads() == (6, 20)  # hybrid CPU: performance cores only


def test_parse_cpu_list():
    assert threads._parse_cpu_list("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]


def test_engine_uses_the_default_threads_when_none_are_given(default_model_path):
    eng = Engine.load(default_model_path, LoadSettings(n_ctx=256))
    try:
        # llama-cpp-python's own default is cpu_count // 2: one thread on a 2-core machine
        assert (eng.llm.n_threads, eng.llm.n_threads_batch) == threads.default_threads()
        assert eng.llm.n_threads == threads.physical_cores() >= 1
        assert eng.llm.n_threads_batch == len(os.sched_getaffinity(0))
    finally:
        eng.close()
    eng = Engine.load(default_model_path, LoadSettings(n_ctx=256, n_threads=1))
    try:
        assert (eng.llm.n_threads, eng.llm.n_threads_batch) == (1, 1)  # an explicit count wins
    finally:
        eng.close()
