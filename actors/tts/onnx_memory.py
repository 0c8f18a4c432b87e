"""Keeping a local ONNX voice's memory in bounds, for every local voice alike.

A synthesis call's memory grows with the audio it makes; ONNX Runtime and glibc both keep
what the largest call needed unless told to give it back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import onnxruntime

# After a call that made this much audio, freed memory goes back to the system (see trim_heap).
TRIM_AFTER_SECONDS = 4.0


def run_options() -> onnxruntime.RunOptions:
    """Options for one synthesis: set `terminate` on them to stop its call."""
    options = onnxruntime.RunOptions()
    # ONNX Runtime's arena keeps the largest call's memory for good (+147 MB after one
    # 200-character Piper call, measured; GBs after a long text): give it back after each
    # call. The cost is within the noise (CPU time per sentence measured the same).
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    options.log_severity_level = 3  # a cancelled call's "terminate flag" is not an error
    return options


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def trim_heap() -> None:
    """Give freed heap memory back to the system. What a long call freed stays in glibc's
    heap otherwise: +20–40 MB of RSS after each 200-character Piper call, measured, back to
    +0 after this (a few ms)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
