"""The fast path, set up once per process: allocator, threads, device, precision, random streams.

Measured on a 2-core CPU (docs/performance.md): glibc returns large activation buffers to the OS
after every step and maps them again on the next; raising its mmap and trim thresholds keeps them
in the heap (190 -> 272 training images/s fp32). channels_last lets oneDNN skip layout reorders.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_configured = False


def _glibc_function(name: str):
    """A function of the process's glibc (mallopt, malloc_trim), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # another C library (musl has no malloc_trim)
        return None


def _keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of unmapping it; False where not glibc."""
    mallopt = _glibc_function("mallopt")
    if mallopt is None:
        return False
    # int mallopt(int, int): with argtypes, ctypes refuses a value out of range instead of
    # masking it (2**62 became 0, a trim threshold of 0: the heap trimmed at every free)
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # No mmap for big blocks (they come from the heap and stay there) and no trimming of the heap
    # short of 2 GiB free at its top (the largest threshold an int holds).
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return bool(ok)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc malloc_trim), once a phase that freed a
    lot is over: _keep_freed_memory keeps them for the next training step otherwise, and what
    comes after training (export, report) would add its memory on top of training's."""
    malloc_trim = _glibc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


def available_memory() -> int | None:
    """Bytes this process can still take: the kernel's MemAvailable, within the cgroup's limit
    where one is set (a container); None where neither can be read (not Linux)."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        cgroup = Path("/sys/fs/cgroup")
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(threads: int | None = None) -> None:
    """Allocator and thread settings; idempotent, cheap after the first call."""
    global _configured
    if _configured:
        return
    allocator = _keep_freed_memory()
    torch.set_num_threads(threads or usable_cores())
    _configured = True
    log.debug(
        "runtime: %d threads, glibc keeps freed memory: %s", torch.get_num_threads(), allocator
    )


NATIVE_BF16_VARIABLE = "IMGCLASS_NATIVE_BF16"
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_SHOWN_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def _cpuinfo(field: str) -> str:
    """The first CPU's `field` in /proc/cpuinfo ("flags", "model name"); "" where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


def _cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX), so autocast pays off.

    $IMGCLASS_NATIVE_BF16 overrides the answer for this process and every process it starts:
    1 (as if native: bf16 autocast on the CPU, emulated and slow where the CPU lacks it) or 0
    (fp32); unset or empty: read the CPU's flags. Any other value is a ValueError naming it.
    """
    value = os.environ.get(NATIVE_BF16_VARIABLE, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(
            f"{NATIVE_BF16_VARIABLE}={value!r}: set it to 1 (bf16 on the CPU) or 0 "
            "(fp32), or unset it to read the CPU's flags"
        )
    return any(flag in _cpu_flags() for flag in _BF16_FLAGS)


def describe_cpu() -> str:
    """One line for benchmark output: the CPU, its relevant flags, the bf16 answer in force and
    the load average (figures are only comparable beside these)."""
    model = _cpuinfo("model name")
    flags = _cpu_flags()
    shown = " ".join(flag for flag in _SHOWN_FLAGS if flag in flags) or "none of " + "/".join(
        _SHOWN_FLAGS
    )
    value = os.environ.get(NATIVE_BF16_VARIABLE, "").strip()
    source = f"{NATIVE_BF16_VARIABLE}={value}" if value else "read from the CPU"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"CPU: {model or 'unknown'}, {usable_cores()} usable cores; flags: {shown}; "
        f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'} ({source}); "
        f"load average: {load}"
    )


def parse_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """auto|cpu|cuda|cuda:N|mps -> a torch.device that exists here; ValueError naming what not.

    auto picks CUDA, then Apple's MPS, then the CPU. "cuda" without an index (and auto) means
    the GPU of this process's local rank under torchrun (cuda:0 otherwise).
    """
    if spec == "auto":
        if torch.cuda.is_available():
            spec = "cuda"
        elif torch.backends.mps.is_available():
            spec = "mps"
        else:
            spec = "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"unknown device {spec!r}: choose auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {spec!r}: no CUDA GPU is available here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda is not None})"
            )
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r}: GPU {index} asked for, {torch.cuda.device_count()} available"
            )
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {spec!r}: Apple's MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {spec!r}: choose auto, cpu, cuda, cuda:N or mps")
    return device


# Share of a GPU's free memory the decoded training and validation images may take when they are
# kept there; the rest is left for the model's activations.
DEVICE_DATA_SHARE = 0.5


@dataclass(frozen=True)
class Device:
    """Where the model runs and in which precision (autocast dtype; None: fp32)."""

    torch_device: torch.device
    amp: torch.dtype | None

    @classmethod
    def select(cls, precision: str = "auto", device: str = "auto", local_rank: int = 0) -> Device:
        """auto precision: bf16 on GPUs that support it, else fp16 (with a grad scaler); on the
        CPU bf16 only where it is native; fp32 on MPS."""
        where = parse_device(device, local_rank)
        if precision == "auto":
            if where.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                precision = "bf16" if where.type == "cpu" and cpu_has_native_bf16() else "fp32"
        if precision == "fp16" and where.type != "cuda":
            raise ValueError(f"precision fp16 needs a CUDA GPU (device {where}); use bf16 or fp32")
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        return cls(where, amp)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.torch_device.type, dtype=self.amp)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (its range underflows small gradients); a no-op otherwise."""
        return torch.amp.GradScaler(self.torch_device.type, enabled=self.amp == torch.float16)

    def holds(self, nbytes: int) -> bool:
        """Whether `nbytes` of data fit on the device beside the model: always on the CPU."""
        if self.torch_device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.torch_device)
            return nbytes <= DEVICE_DATA_SHARE * free
        if self.torch_device.type == "mps":
            free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
            return nbytes <= DEVICE_DATA_SHARE * free
        return True

    @property
    def precision(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp, "fp32")


def stream_seed(seed: int, name: str) -> int:
    """An independent 63-bit seed for one named random stream (split, shuffle, augment, init)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, name))
