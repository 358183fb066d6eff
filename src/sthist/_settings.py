"""Settings across sthist: data and feature caches, random state, workers, progress bars, memory budget, offline mode."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

__all__ = ["Settings", "settings"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's or SLURM's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _default_data_dir() -> Path:
    env = os.environ.get("STHIST_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("sthist"))


def _default_cache_dir() -> Path | None:
    env = os.environ.get("STHIST_CACHE_DIR")
    return Path(env).expanduser() if env else None


@dataclass
class Settings:
    """Global settings of sthist (``sthist.settings``).

    Attributes
    ----------
    data_dir
        Folder that holds one subfolder per dataset (``her2st/``, ...), laid out as the source repositories.
        Defaults to the environment variable ``STHIST_DATA_DIR`` or the user cache folder.
    random_state
        Seed used where a function's ``random_state`` is ``None`` (fitting, cross-validation).
    num_workers
        Worker processes for data loading (0: load in the main process).
    progress
        Show progress bars for long operations.
    in_memory_bytes
        Largest pyramid level (bytes) that patch extraction materialises in memory; larger levels are
        read lazily by chunks.
    cache_dir
        Folder where encoder features are kept between processes (:class:`sthist.data.TokenCache` with no
        folder of its own writes under ``cache_dir / 'tokens'``), keyed by the content they were computed from.
        Defaults to the environment variable ``STHIST_CACHE_DIR``; ``None``: features are kept in memory only.
    offline
        Never reach a model hub: pretrained weights that would come from one are read from the Hugging Face
        cache (``HF_HOME``, as ``HF_HUB_OFFLINE=1`` makes timm do) without any network call, and refused with
        an error that says how to download them when they are not there. Defaults to ``True`` unless the
        environment sets ``HF_HUB_OFFLINE=0``.
    threads
        Torch CPU threads used by fitting and prediction. Defaults to the cores this process may use (its
        affinity mask), not the machine's core count, so that a job given 2 of 16 cores does not start 16
        threads that fight each other; ``0`` leaves torch's own setting alone.
    retain_freed_memory
        While patches are encoded and predictions retrieved, let the process keep the memory it frees for its
        next allocations (glibc's malloc on Linux: mmap and trim thresholds raised to 2 GiB) instead of handing
        every large block back to the system at once. The encoder allocates and frees the same few hundred MiB
        for every batch, retrieval a block of similarities for every chunk of spots; with glibc's defaults each
        pays again for fresh pages, which can halve encoding speed on a small CPU
        (``benchmarks/results/speed.md``). When that work ends, the thresholds go to where glibc's adaptive ones settle and the
        kept memory is handed back, so that training on cached tokens does not carry it
        (``benchmarks/results/scaling.md``). Nothing is done when the environment sets
        ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` (sthist's Makefile does, for its test suite:
        the whole process then keeps what it frees); ``False`` leaves the allocator alone.
    """

    data_dir: Path = field(default_factory=_default_data_dir)
    cache_dir: Path | None = field(default_factory=_default_cache_dir)
    random_state: int = 0
    num_workers: int = 0
    progress: bool = True
    in_memory_bytes: int = 2 * 1024**3
    offline: bool = field(default_factory=lambda: os.environ.get("HF_HUB_OFFLINE", "1") != "0")
    threads: int = field(default_factory=available_cores)
    retain_freed_memory: bool = True

    def __setattr__(self, name: str, value) -> None:
        if name == "data_dir":
            value = Path(value).expanduser()
        elif name == "cache_dir" and value is not None:
            if not isinstance(value, str | os.PathLike) or not str(value):
                raise ValueError(f"settings.cache_dir must be a folder or None, got {value!r}.")
            value = Path(value).expanduser()
        elif name in ("random_state", "num_workers", "in_memory_bytes", "threads"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"settings.{name} must be a non-negative integer, got {value!r}.")
        elif name in ("progress", "offline", "retain_freed_memory") and not isinstance(value, bool):
            raise ValueError(f"settings.{name} must be True or False, got {value!r}.")
        object.__setattr__(self, name, value)


settings = Settings()


#: glibc's mallopt parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Inside :func:`retained_memory`: the largest value a C int holds (2 GiB) for both thresholds.
_RETAINED = {_M_MMAP_THRESHOLD: 2**31 - 1, _M_TRIM_THRESHOLD: 2**31 - 1}
#: After it: where glibc's own adaptive thresholds settle once a process has freed a large block (64-bit
#: glibc: the mmap threshold's ceiling, 32 MiB, and twice that for trimming).
_RELEASED = {_M_MMAP_THRESHOLD: 32 * 2**20, _M_TRIM_THRESHOLD: 64 * 2**20}
_ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_allocator_lock = threading.Lock()
_retaining = 0  # blocks of retained_memory open now (nested calls, threads)


@functools.cache
def _glibc():
    """The C library when it is glibc's; None elsewhere (musl, macOS, Windows)."""
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def retained_memory() -> Iterator[bool]:
    """Within the block, glibc's malloc keeps the memory the process frees (``settings.retain_freed_memory``).

    Used around patch encoding and retrieval, which allocate and free the same large blocks for every batch
    or chunk; with glibc's default thresholds each pays again for fresh pages. Inside the block the mmap and
    trim thresholds are raised to 2 GiB. When the outermost block ends they are set to where glibc's adaptive
    thresholds settle (32 and 64 MiB), and what was kept is handed back to the system (``malloc_trim``), so
    that training on cached tokens afterwards does not carry it. Yields whether the thresholds were raised:
    not off glibc, not with the setting off, and not when the environment sets ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_`` (the environment's choice then holds throughout).
    """
    global _retaining
    libc = None
    if settings.retain_freed_memory and not any(name in os.environ for name in _ALLOCATOR_VARIABLES):
        libc = _glibc()
    if libc is None:
        yield False
        return
    with _allocator_lock:
        _retaining += 1
        if _retaining == 1:
            for parameter, value in _RETAINED.items():
                libc.mallopt(parameter, value)
    try:
        yield True
    finally:
        with _allocator_lock:
            _retaining -= 1
            if _retaining == 0:
                for parameter, value in _RELEASED.items():
                    libc.mallopt(parameter, value)
                libc.malloc_trim(0)


def apply_runtime_settings() -> None:
    """Apply ``settings.threads`` to torch.

    Called where fitting and prediction start, so that setting it before a call takes effect.
    (``settings.retain_freed_memory`` applies around patch encoding: :func:`retained_memory`.)
    """
    import torch

    if settings.threads and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
