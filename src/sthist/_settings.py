"""Settings that apply across sthist: data cache, random state, workers, progress bars, memory budget, offline mode."""

from __future__ import annotations

import os
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
    offline
        Never reach a model hub: pretrained weights that would come from one are refused with an error that
        asks for a local file (no retries on machines without internet). Defaults to ``True`` unless the
        environment sets ``HF_HUB_OFFLINE=0``.
    threads
        Torch CPU threads used by fitting and prediction. Defaults to the cores this process may use (its
        affinity mask), not the machine's core count, so that a job given 2 of 16 cores does not start 16
        threads that fight each other; ``0`` leaves torch's own setting alone.
    retain_freed_memory
        Let the process keep the memory it frees for its next allocations (glibc's malloc on Linux: mmap and
        trim thresholds raised to 2 GiB) instead of handing every large block back to the system at once. The
        encoder allocates and frees the same few hundred MiB for every batch; with glibc's defaults each batch
        pays again for fresh pages, and EfficientNet-Lite0 encoded 29 patches/s against 76-85 with the
        memory kept (2-core CPU). Applied once, where fitting and prediction start, unless the environment
        sets ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` itself. The cost is memory: what is
        freed stays with the process until it ends, and peak memory can be higher (``benchmarks/scaling.py`` at
        100k spots: 4.5 against 3.9-4.1 GiB in training with the thresholds at 4 GiB). ``False`` leaves the
        allocator alone: set it for memory-bound jobs that do not encode patches.
    """

    data_dir: Path = field(default_factory=_default_data_dir)
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
        elif name in ("random_state", "num_workers", "in_memory_bytes", "threads"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"settings.{name} must be a non-negative integer, got {value!r}.")
        elif name in ("progress", "offline", "retain_freed_memory") and not isinstance(value, bool):
            raise ValueError(f"settings.{name} must be True or False, got {value!r}.")
        object.__setattr__(self, name, value)


settings = Settings()


#: glibc's mallopt parameters and the value sthist sets (the largest a C int holds: 2 GiB).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _RETAINED_BYTES = -1, -3, 2**31 - 1
_ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_allocator_tuned = False


def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once (``settings.retain_freed_memory``); whether they are raised.

    Nothing is done off glibc, when the setting is off, or when the environment sets either threshold.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if not settings.retain_freed_memory or any(name in os.environ for name in _ALLOCATOR_VARIABLES):
        return False
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _allocator_tuned = all(
        mallopt(parameter, _RETAINED_BYTES) == 1 for parameter in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)
    )
    return _allocator_tuned


def apply_runtime_settings() -> None:
    """Apply ``settings.threads`` to torch and ``settings.retain_freed_memory`` to the allocator.

    Called where fitting and prediction start, so that setting either before a call takes effect.
    """
    import torch

    if settings.threads and torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    retain_freed_memory()
