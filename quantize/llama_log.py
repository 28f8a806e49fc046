"""Route llama.cpp's log into Python logging (logger `belle.quantize.llama_cpp`).

llama-cpp-python's own callback maps ggml's log levels from an older enum (ggml.h now has
DEBUG=1, INFO=2, WARN=3, ERROR=4), so with verbose=False it still prints warnings to stderr. Here
llama.cpp's INFO/DEBUG become DEBUG, WARN becomes INFO (seen with `belle -v`), ERROR becomes WARNING.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("belle.quantize.llama_cpp")

# ggml_log_level (ggml/include/ggml.h) -> Python logging level
LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.INFO, 4: logging.WARNING}
GGML_LOG_LEVEL_CONT = 5

_state = {"installed": None, "level": logging.DEBUG, "buf": ""}


def _callback(level: int, text: bytes, _user) -> None:
    if level != GGML_LOG_LEVEL_CONT:
        _state["level"] = LEVELS.get(level, logging.DEBUG)
    _state["buf"] += text.decode("utf-8", errors="replace")
    while "\n" in _state["buf"]:
        line, _state["buf"] = _state["buf"].split("\n", 1)
        if line.strip():
            log.log(_state["level"], "%s", line)


def route_llama_log() -> None:
    """Install the callback once per process (llama_log_set is global)."""
    if _state["installed"] is None:
        import llama_cpp

        _state["installed"] = llama_cpp.llama_log_callback(_callback)  # keep a reference: C holds the pointer
    import llama_cpp

    llama_cpp.llama_log_set(_state["installed"], ctypes.c_void_p(0))
