"""`hvdtrain doctor`: which Python, frameworks, Horovod and MPI this environment has, and what to fix."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SETUP_FIX = "run `make setup` (scripts/setup_env.sh) from the hvdtrain checkout"

# Each framework is probed in its own process: hvdtrain never loads torch and TensorFlow together.
_PROBES = {
    "torch": """
import json, torch, horovod, horovod.torch as hvd
print(json.dumps({"version": torch.__version__, "horovod": horovod.__version__,
                  "gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(), "nccl": hvd.nccl_built() > 0,
                  "cuda": torch.cuda.is_available()}))
""",
    "tensorflow": """
import os; os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import json, tensorflow as tf, keras, horovod, horovod.tensorflow as hvd
print(json.dumps({"version": tf.__version__, "keras": keras.__version__, "horovod": horovod.__version__,
                  "gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(), "nccl": hvd.nccl_built() > 0,
                  "cuda": bool(tf.config.list_physical_devices("GPU"))}))
""",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _probe(framework: str) -> Check:
    proc = subprocess.run([sys.executable, "-c", _PROBES[framework]], capture_output=True, text=True,
                          timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(framework, False, f"cannot import {framework} with horovod ({last})", SETUP_FIX)
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    controllers = [c for c in ("gloo", "mpi", "nccl") if info[c]]
    extra = f", keras {info['keras']}" if "keras" in info else ""
    detail = (f"{framework} {info['version']}{extra}; horovod {info['horovod']} built with "
              f"{', '.join(controllers) or 'no controller'}; GPU {'yes' if info['cuda'] else 'no'}")
    missing = [c for c in ("gloo", "mpi") if not info[c]]
    if missing:
        return Check(framework, False, detail, f"horovod lacks {' and '.join(missing)}: {SETUP_FIX} "
                                               "(it rebuilds Horovod with both controllers)")
    return Check(framework, True, detail)


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


def run_doctor() -> int:
    """Prints one line per check and the fixes; returns 0 when everything is usable, 1 otherwise."""
    from hvdtrain import __version__

    checks = [Check("python", True, f"{sys.version.split()[0]} ({sys.executable})"),
              Check("hvdtrain", True, __version__), _mpi(), _horovodrun(),
              _probe("torch"), _probe("tensorflow")]
    width = max(len(c.name) for c in checks)
    for c in checks:
        print(f"{'ok ' if c.ok else 'BAD'} {c.name:<{width}}  {c.detail}")
    problems = [c for c in checks if not c.ok]
    for c in problems:
        print(f"fix {c.name}: {c.fix}")
    print("all good" if not problems else f"{len(problems)} problem(s) found")
    return 0 if not problems else 1
