"""`hvdtrain doctor`: which Python, frameworks, Horovod, MPI and GPUs this environment has, and what to fix.

Per framework it reports what Horovod was built with (MPI, Gloo, NCCL and its version, CUDA), the framework's
CUDA, cuDNN and NCCL versions and the GPUs it sees. On a machine with an NVIDIA GPU, a framework or Horovod
that cannot use it is a problem (the fix: the CUDA setup), unless HVDTRAIN_DEVICE=cpu says that the CPU stack
is wanted. `--json` prints the same as one JSON object (docs/setup.md, "GPU machines").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvdtrain.registry import BACKEND_NAMES

SETUP_FIX = "run `make setup` (scripts/setup_env.sh) from the hvdtrain checkout"
GPU_FIX = ("run `HVDTRAIN_DEVICE=cuda make setup` from the hvdtrain checkout (CUDA builds of torch and TensorFlow, "
           "Horovod with NCCL)")
FRAMEWORKS = BACKEND_NAMES

# Each framework is probed in its own process: hvdtrain never loads torch and TensorFlow together. Horovod's
# nccl_built() is the NCCL version it was compiled with (0: none); torch's NCCL version is the library it loaded.
_PROBES = {
    "torch": """
import json, torch, horovod, horovod.torch as hvd
cuda = torch.version.cuda
nccl_runtime = None
if cuda is not None:
    try:
        nccl_runtime = ".".join(str(part) for part in torch.cuda.nccl.version())
    except Exception:
        pass
print(json.dumps({"version": torch.__version__, "horovod": horovod.__version__,
                  "mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built()), "nccl_code": int(hvd.nccl_built()),
                  "horovod_cuda": bool(hvd.cuda_built()), "cuda_version": cuda,
                  "cudnn_code": torch.backends.cudnn.version() if cuda is not None else None,
                  "nccl_runtime_version": nccl_runtime, "gpus": torch.cuda.device_count()}))
""",
    "tensorflow": """
import os; os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import json, tensorflow as tf, keras, horovod, horovod.tensorflow as hvd
info = tf.sysconfig.get_build_info()
cuda = info.get("cuda_version") if info.get("is_cuda_build") else None
print(json.dumps({"version": tf.__version__, "keras": keras.__version__, "horovod": horovod.__version__,
                  "mpi": bool(hvd.mpi_built()), "gloo": bool(hvd.gloo_built()), "nccl_code": int(hvd.nccl_built()),
                  "horovod_cuda": bool(hvd.cuda_built()), "cuda_version": cuda,
                  "cudnn_version": info.get("cudnn_version") if cuda else None, "nccl_runtime_version": None,
                  "gpus": len(tf.config.list_physical_devices("GPU"))}))
""",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Gpus:
    """The NVIDIA GPUs of this machine, as the driver lists them (whatever the frameworks can use)."""

    count: int
    names: list[str]
    source: str


def machine_gpus() -> Gpus:
    """`nvidia-smi -L` when it answers, else the driver's /proc entries (as scripts/common.sh's gpu_count)."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        names = [line.split(":", 1)[1].split("(UUID")[0].strip() for line in out.splitlines()
                 if line.startswith("GPU ") and ":" in line]
        if names:
            return Gpus(len(names), names, "nvidia-smi -L")
    gpus_dir = Path(os.environ.get("HVDTRAIN_NVIDIA_GPUS_DIR", "/proc/driver/nvidia/gpus"))
    entries = sorted(gpus_dir.iterdir()) if gpus_dir.is_dir() else []
    return Gpus(len(entries), [], str(gpus_dir) if entries else "")


def nccl_version(code: int) -> str | None:
    """NCCL_VERSION_CODE as a version: 22907 -> 2.29.7 (NCCL >= 2.9), 2708 -> 2.7.8 (older)."""
    if code <= 0:
        return None
    if code >= 10000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def cudnn_version(code: int | None) -> str | None:
    """cudnnGetVersion() as a version: 92000 -> 9.20.0 (cuDNN >= 9), 8907 -> 8.9.7 (cuDNN 8)."""
    if not code:
        return None
    if code >= 90000:
        return f"{code // 10000}.{code // 100 % 100}.{code % 100}"
    return f"{code // 1000}.{code // 100 % 10}.{code % 100}"


def _normalise(info: dict[str, Any]) -> dict[str, Any]:
    """The probe's answer as reported: booleans mpi, gloo, nccl, cuda (Horovod's), versions as strings."""
    out: dict[str, Any] = {"version": info["version"], "horovod": info["horovod"]}
    if "keras" in info:
        out["keras"] = info["keras"]
    out.update(mpi=bool(info["mpi"]), gloo=bool(info["gloo"]), nccl=info["nccl_code"] > 0,
               nccl_version=nccl_version(info["nccl_code"]), cuda=bool(info["horovod_cuda"]),
               cuda_version=info["cuda_version"],
               cudnn_version=info["cudnn_version"] if "cudnn_version" in info else cudnn_version(info["cudnn_code"]),
               nccl_runtime_version=info["nccl_runtime_version"], gpus=int(info["gpus"]))
    return out


def assess(framework: str, info: dict[str, Any], gpus: Gpus, device: str) -> Check:
    """One framework's line: `info` as _normalise returns it; `device` is HVDTRAIN_DEVICE (cpu: no GPU wanted)."""
    built = ["gloo"] * info["gloo"] + ["mpi"] * info["mpi"]
    if info["nccl"]:
        built.append(f"nccl {info['nccl_version']}")
    if info["cuda"]:
        built.append("cuda")
    extra = f", keras {info['keras']}" if "keras" in info else ""
    if info["cuda_version"] is None:
        build = "CPU build"
    else:
        libs = [f"CUDA {info['cuda_version']}"]
        if info["cudnn_version"]:
            libs.append(f"cuDNN {info['cudnn_version']}")
        if info["nccl_runtime_version"]:
            libs.append(f"NCCL {info['nccl_runtime_version']} loaded")
        build = ", ".join(libs)
    detail = (f"{framework} {info['version']}{extra} ({build}); horovod {info['horovod']} built with "
              f"{', '.join(built) or 'no controller'}; GPUs visible: {info['gpus']}")
    missing = [c for c in ("gloo", "mpi") if not info[c]]
    if missing:
        return Check(framework, False, detail, f"horovod lacks {' and '.join(missing)}: {SETUP_FIX} "
                                               "(it rebuilds Horovod with both controllers)", info)
    if gpus.count == 0 or device == "cpu":
        return Check(framework, True, detail, data=info)
    if info["cuda_version"] is None:
        return Check(framework, False, detail, f"this machine has {gpus.count} GPU(s) but {framework} is a CPU "
                                               f"build: {GPU_FIX}", info)
    if not (info["nccl"] and info["cuda"]):
        return Check(framework, False, detail, f"this machine has {gpus.count} GPU(s) but Horovod was built "
                                               f"without NCCL/CUDA: {GPU_FIX}", info)
    if info["gpus"] == 0:
        return Check(framework, False, detail,
                     f"{framework} sees none of the {gpus.count} GPU(s) that nvidia-smi lists: check "
                     f"CUDA_VISIBLE_DEVICES and that the driver supports CUDA {info['cuda_version']} "
                     "(nvidia-smi's header shows the newest CUDA it supports)", info)
    return Check(framework, True, detail, data=info)


def _probe_all(gpus: Gpus, device: str) -> list[Check]:
    # Both at once: each spends its seconds importing its framework.
    procs = {fw: subprocess.Popen([sys.executable, "-c", _PROBES[fw]], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for fw in FRAMEWORKS}
    checks = []
    for fw, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["no output"])[-1]
            data: dict[str, Any] = {"mpi": False, "gloo": False, "nccl": False, "cuda": False, "gpus": 0,
                                    "error": last}
            fix = GPU_FIX if gpus.count and device != "cpu" else SETUP_FIX
            checks.append(Check(fw, False, f"cannot import {fw} with horovod ({last})", fix, data))
            continue
        checks.append(assess(fw, _normalise(json.loads(stdout.strip().splitlines()[-1])), gpus, device))
    return checks


def _mpi() -> Check:
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        return Check("mpi", False, "mpirun not found",
                     "install OpenMPI (apt-get install openmpi-bin libopenmpi-dev) or `module load` your "
                     "cluster's MPI")
    out = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout.strip()
    return Check("mpi", True, f"{out.splitlines()[0] if out else 'unknown version'} ({mpirun})")


def _horovodrun() -> Check:
    path = shutil.which("horovodrun")
    if path is not None:
        return Check("horovodrun", True, path)
    beside = Path(sys.executable).parent / "horovodrun"
    if beside.is_file():
        return Check("horovodrun", True, f"{beside} (not on PATH: source {beside.parent}/activate)")
    return Check("horovodrun", False, "horovodrun not found", SETUP_FIX)


def _gpu_check(gpus: Gpus, device: str) -> Check:
    if gpus.count == 0:
        return Check("gpus", True, "no NVIDIA GPU found (CPU stack)")
    names = f": {', '.join(gpus.names)}" if gpus.names else ""
    wanted = " (HVDTRAIN_DEVICE=cpu: the CPU stack is wanted)" if device == "cpu" else ""
    return Check("gpus", True, f"{gpus.count} NVIDIA GPU(s) ({gpus.source}){names}{wanted}")


def _as_json(checks: list[Check], gpus: Gpus, device: str) -> dict[str, Any]:
    from hvdtrain import __version__

    by_name = {c.name: c for c in checks}
    problems = [c for c in checks if not c.ok]
    out: dict[str, Any] = {
        "ok": not problems, "gpus": gpus.count, "gpu_names": gpus.names, "device": device,
        "python": {"version": sys.version.split()[0], "executable": sys.executable}, "hvdtrain": __version__,
        "mpirun": {"ok": by_name["mpi"].ok, "detail": by_name["mpi"].detail},
        "horovodrun": {"ok": by_name["horovodrun"].ok, "detail": by_name["horovodrun"].detail},
    }
    for fw in FRAMEWORKS:
        out[fw] = {"ok": by_name[fw].ok, **by_name[fw].data, "detail": by_name[fw].detail}
    out["problems"] = [{"check": c.name, "detail": c.detail, "fix": c.fix} for c in problems]
    return out


def run_doctor(as_json: bool = False) -> int:
    """Prints one line per check and the fixes (or, with `as_json`, one JSON object); returns 0 when everything
    is usable, 1 otherwise."""
    from hvdtrain import __version__

    gpus = machine_gpus()
    device = os.environ.get("HVDTRAIN_DEVICE", "auto")
    checks = [Check("python", True, f"{sys.version.split()[0]} ({sys.executable})"),
              Check("hvdtrain", True, __version__), _mpi(), _horovodrun(), _gpu_check(gpus, device),
              *_probe_all(gpus, device)]
    problems = [c for c in checks if not c.ok]
    if as_json:
        print(json.dumps(_as_json(checks, gpus, device), indent=2))
        return 0 if not problems else 1
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok ' if c.ok else 'BAD'} {c.name:<{width}}  {c.detail}")
    for c in problems:
        print(f"fix {c.name}: {c.fix}")
    print("all good" if not problems else f"{len(problems)} problem(s) found")
    return 0 if not problems else 1
