"""The fused native augmentation kernel (native/affine.cpp) for numpy batches, shared by both backends.

The C++ source is compiled on first use with the system C++ compiler (`$CXX`, else `c++`) into a cache
keyed by the source, the flags and this CPU's model and feature flags (`$HVDTRAIN_CACHE`, else
`~/.cache/hvdtrain/native`): it is built for the CPU it runs on (`-march=native`, without it where the
compiler refuses), and nodes of a cluster sharing a home directory each get a build for their own CPU.
The library is written under a temporary name and renamed, so ranks starting together never load a
half-written file.
Threads: the CPUs this process may use divided by the ranks on this node (`$OMPI_COMM_WORLD_LOCAL_SIZE`
or `$HOROVOD_LOCAL_SIZE`), at least 1; `$HVDTRAIN_AUGMENT_THREADS` overrides.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hvdtrain.augment.kernel import NUMPY_OPS, apply_batch
from hvdtrain.config import AugmentConfig
from hvdtrain.errors import ConfigError

SOURCE = Path(__file__).with_name("native") / "affine.cpp"
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-fno-fast-math")
MAX_IMAGE_FLOATS = 2**31 - 4  # per image; the kernel uses int32 offsets
_MODES = {"constant": 0, "nearest": 1, "reflect": 2, "wrap": 3}
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_failure: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("HVDTRAIN_CACHE") or Path.home() / ".cache" / "hvdtrain"
    return Path(root) / "native"


def _cpu_signature() -> str:
    """This CPU's model and feature flags (what -march=native builds for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part", "CPU implementer")
    return "\n".join(sorted({line for line in lines if line.split(":")[0].strip() in wanted}))


def _build(compiler: list[str], flags: Sequence[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".affine.", suffix=".so")
    os.close(fd)
    try:
        proc = subprocess.run([*compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr or proc.stdout or "no output").strip().splitlines()[0]
            raise OSError(f"{' '.join(compiler)} failed: {first}")
        os.replace(tmp, target)
    except FileNotFoundError:
        raise OSError(f"no C++ compiler '{compiler[0]}'") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _compile() -> ctypes.CDLL:
    compiler = shlex.split(os.environ.get("CXX", "c++"))
    target = None
    for flags in ((*FLAGS, "-march=native"), FLAGS):
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join([*compiler, *flags]).encode()
                             + _cpu_signature().encode()).hexdigest()[:16]
        target = _cache_dir() / key / "affine.so"
        if target.is_file():
            break
        try:
            _build(compiler, flags, target)
            break
        except OSError:
            if "-march=native" not in flags:
                raise
    assert target is not None
    lib = ctypes.CDLL(str(target))
    lib.hvdtrain_affine.restype = ctypes.c_int
    lib.hvdtrain_affine.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                    ctypes.c_float, ctypes.c_int]
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or None when it cannot be built here (`failure()` says why)."""
    global _library, _failure
    with _lock:
        if _library is None and _failure is None:
            try:
                _library = _compile()
            except OSError as exc:
                _failure = str(exc)
    return _library


def failure() -> str | None:
    return _failure


def threads() -> int:
    """Kernel threads for this process (see the module docstring)."""
    if os.environ.get("HVDTRAIN_AUGMENT_THREADS"):
        return max(1, int(os.environ["HVDTRAIN_AUGMENT_THREADS"]))
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("HOROVOD_LOCAL_SIZE") or "1"
    return max(1, len(os.sched_getaffinity(0)) // max(1, int(local)))


def _native_affine(images: np.ndarray, matrices: np.ndarray, moved: np.ndarray, fill_mode: str,
                   cval: float) -> np.ndarray:
    lib = load()
    assert lib is not None
    src = np.ascontiguousarray(images, dtype=np.float32)
    mats = np.ascontiguousarray(matrices, dtype=np.float64)
    flags = np.ascontiguousarray(moved, dtype=np.uint8)
    out = np.empty_like(src)
    n, h, w, c = src.shape
    code = lib.hvdtrain_affine(src.ctypes.data, out.ctypes.data, mats.ctypes.data, flags.ctypes.data, n, h, w, c,
                               _MODES[fill_mode], float(cval), threads())
    if code != 0:
        raise ValueError(f"native augmentation kernel refused a batch of shape {src.shape}")
    return out


NATIVE_OPS = replace(NUMPY_OPS, affine=_native_affine)


def use_native(images: Any, config: AugmentConfig) -> bool:
    """Whether `augment.kernel` sends this batch to the native kernel (numpy input only)."""
    if config.kernel == "framework" or not isinstance(images, np.ndarray):
        return False
    if images.ndim == 4 and images[:1].size >= MAX_IMAGE_FLOATS:
        return False  # beyond the kernel's int32 offsets: the framework kernel takes it
    if load() is not None:
        return True
    if config.kernel == "native":
        raise ConfigError(f"augment.kernel=native: the native kernel cannot be built ({failure()}): install a C++ "
                          "compiler (build-essential) or set augment.kernel=auto")
    return False


def apply_transforms(images: np.ndarray, params: Sequence[dict[str, Any]], config: AugmentConfig) -> np.ndarray:
    """Keras `apply_transform` semantics for a NHWC float numpy batch, on the native kernel."""
    out: np.ndarray = apply_batch(NATIVE_OPS, np.asarray(images, dtype=np.float32), params, config.fill_mode,
                                  config.cval)
    return out


def prepare(config: AugmentConfig) -> None:
    """Builds (or loads) the kernel now, when the config will use it, so that the first training batch does
    not wait for the compiler and `augment.kernel=native` fails before training starts."""
    if config.random and config.kernel != "framework":
        use_native(np.zeros((1, 1, 1, 1), dtype=np.float32), config)
