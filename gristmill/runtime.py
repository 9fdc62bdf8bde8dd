"""Where device, precision, seeds, threads and the distributed process group are resolved: once, here.

Stages call these functions and pass the results down; nothing here runs at import time. The rule for
precision is one code path: on CUDA, bf16 autocast (and torch.compile when asked for "auto"); on CPU,
plain fp32 and eager mode unless bf16 is asked for (``precision: bf16``, or LoRA's ``auto`` on a CPU with
bf16 matrix units: see :func:`cpu_has_fast_bf16`).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gristmill.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ``"cuda"`` without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was asked for but CUDA is not available; use device: auto or cpu")
    if name.startswith("mps") and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{name}' was asked for but MPS is not available; use device: auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device '{name}' (use auto, cpu, cuda or cuda:N)") from e


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, bf16: bool | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (or wherever ``bf16`` is True); a no-op otherwise (fp32 on CPU by default:
    bf16 matmuls are slow on CPUs without bf16 units, and inexact everywhere)."""
    if bf16 is None:
        bf16 = device.type == "cuda"
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_fast_bf16() -> bool:
    """The CPU multiplies bf16 matrices in hardware (AMX tiles or AVX-512 BF16), where bf16 matmuls run
    about twice as fast as fp32 ones."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # an older torch without the probes
        return False


def resolve_bf16(precision: str, device: torch.device, *, frozen_base: bool = False) -> bool:
    """Whether to compute in bf16: ``fp32``/``bf16`` as said; ``auto`` = on CUDA, and on a CPU with bf16
    units when most weights are frozen (LoRA: only the adapters train, in fp32)."""
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_fast_bf16():
            import warnings

            warnings.warn("precision: bf16 on a CPU without bf16 units: expect it to be slower than fp32",
                          stacklevel=2)
        return True
    if precision == "fp32":
        return False
    return device.type == "cuda" or (device.type == "cpu" and frozen_base and cpu_has_fast_bf16())


def should_compile(setting: str | bool, device: torch.device) -> bool:
    """torch.compile policy: "auto" compiles on CUDA only (compile time does not pay off on CPU)."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return device.type == "cuda"
    return setting in ("true", "on", "yes")


def set_threads(n: int | None) -> None:
    """Intra-op CPU threads (None or 0 leaves torch's default)."""
    if n:
        torch.set_num_threads(n)


def release_openmp_threads() -> bool:
    """Free the calling thread's OpenMP worker threads (libgomp's ``omp_pause_resource_all``).

    Every thread that runs a parallel torch op gets its own team of OpenMP workers, and they stay counted
    after it goes idle. Once a process has more OpenMP threads than cores, libgomp stops spin-waiting and
    every op's hand-off sleeps on a futex: on 2 cores a decode step on the inference engine's thread took
    twice as long after the main thread had loaded the model (27 vs 13 ms for SmolLM2 in int4). Call it
    from a thread that is done with torch before another thread takes over the work; the team is made
    again if this thread runs a parallel op later. Spinning workers are what make this fast, and what
    slows everything down when other processes want the cores: the CLI therefore caps libgomp's spin
    (``GOMP_SPINCOUNT``, see ``gristmill.cli.OPENMP_SPIN``). Returns whether it applied (libgomp only).
    """
    import ctypes
    import ctypes.util
    from pathlib import Path

    candidates = sorted(Path(torch.__file__).parent.glob("lib/libgomp*.so*"))
    name = str(candidates[0]) if candidates else ctypes.util.find_library("gomp")
    if not name:
        return False
    try:
        pause = ctypes.CDLL(name).omp_pause_resource_all  # already loaded by torch: the same library
    except (OSError, AttributeError):  # another OpenMP runtime, or a libgomp older than OpenMP 5.0
        return False
    omp_pause_soft = 1
    return pause(omp_pause_soft) == 0


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed buffers for reuse instead of handing them back to the kernel.

    By default every tensor over ~128 KiB-32 MiB gets fresh pages from mmap and returns them on free, so
    a CPU training step page-faults (and the kernel zeroes) the same activations again each step: ~3,500
    faults per step on the benchmark model. Raising the mmap and trim thresholds turns that into plain
    reuse; resident memory then stays at its working-set peak, which training reaches in its first step
    anyway. Returns whether it applied (glibc only; a no-op elsewhere).
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


def rng_state() -> dict[str, object]:
    """All random generator states, for exact resume (torch CPU/CUDA as tensors, the rest as JSON-able)."""
    state: dict[str, object] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, object]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))  # JSON turns the tuples into lists
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------------
# Distributed (torchrun): RANK / LOCAL_RANK / WORLD_SIZE come from the environment torchrun sets.


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files, logs and shows progress."""
        return self.rank == 0


def dist_from_env() -> Dist:
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                int(os.environ.get("WORLD_SIZE", 1)))


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo on CPU); pick this rank's device."""
    d = dist_from_env()
    device = resolve_device(device_name)
    if d.enabled:
        import torch.distributed as tdist

        if device.type == "cuda":
            device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(device)
        if not tdist.is_initialized():
            tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return d, device


def shutdown_distributed() -> None:
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def main_process_first(d: Dist) -> Iterator[None]:
    """Rank 0 runs the body first (e.g. writing a file); the others wait, then run it."""
    import torch.distributed as tdist

    if d.enabled and not d.is_main:
        tdist.barrier()
    yield
    if d.enabled and d.is_main:
        tdist.barrier()


# ----------------------------------------------------------------------------------------------------
# The resolved runtime a training loop is handed.


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dist: Dist
    compile: bool
    """torch.compile the model (resolved from "auto": CUDA only)."""
    bf16: bool = False
    """Compute under bf16 autocast (resolved from the config's ``precision``)."""

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.bf16)

    @property
    def dtype_name(self) -> str:
        return "bf16-autocast" if self.bf16 else "fp32"


def setup_runtime(device: str = "auto", compile: str | bool = "auto", threads: int | None = None,
                  seed: int = 0, precision: str = "auto", frozen_base: bool = False) -> Runtime:
    """Resolve device, precision (see :func:`resolve_bf16`), compile policy and threads, join torchrun's
    process group if any, and seed every generator (the same seed on every rank, so all ranks build the
    same initial model)."""
    set_threads(threads)
    d, dev = init_distributed(device)
    seed_everything(seed)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()
    return Runtime(dev, d, should_compile(compile, dev), resolve_bf16(precision, dev, frozen_base=frozen_base))


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; falls back to the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
