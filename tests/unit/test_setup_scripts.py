"""The setup scripts' failure path: a broken Horovod build keeps its whole log where the message says and
names its first error (scripts/build_horovod.sh, scripts/common.sh's first_build_error)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent


def first_build_error(log: Path) -> str:
    return subprocess.run(["bash", "-c", f'source "{REPO}/scripts/common.sh"; first_build_error "$1"', "_", str(log)],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize(("log", "expected"), [
    # pip prints its own error before the output of the build it ran: the cause must win.
    ("  error: subprocess-exited-with-error\n      -- Found MPI\n      CMake Error at torch/CMakeLists.txt:13 "
     "(find_package):\n        Could NOT find CUDAToolkit (missing: CUDA_CUDART)\n        (found version \"13.0\")\n"
     "      Call Stack (most recent call first):\n",
     'CMake Error at torch/CMakeLists.txt:13 (find_package): Could NOT find CUDAToolkit (missing: CUDA_CUDART) '
     '(found version "13.0")'),
    ("  error: subprocess-exited-with-error\n      /src/horovod/common/x.cc:3:10: fatal error: nccl.h: No such file "
     "or directory\n      error: later\n",
     "/src/horovod/common/x.cc:3:10: fatal error: nccl.h: No such file or directory"),
    ("patching file CMakeLists.txt\nHunk #1 FAILED at 16.\n1 out of 1 hunk FAILED\n", "Hunk #1 FAILED at 16."),
    ("  error: subprocess-exited-with-error\n  nothing else\n", "error: subprocess-exited-with-error"),
    ("all fine\n", ""),
])
def test_first_build_error_names_the_cause(tmp_path: Path, log: str, expected: str) -> None:
    path = tmp_path / "build.log"
    path.write_text(log)
    assert first_build_error(path) == expected


@pytest.fixture(scope="module")
def horovod_sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Horovod's source distribution: the one `make setup` kept in its cache, else downloaded once here. pip's
    download prepares the package's metadata (about 14 s on a slow machine), which the failure path is not about;
    every fresh setup downloads it (scripts/build_horovod.sh)."""
    cached = Path(_plan("build_horovod.sh", {**os.environ, "VENV": str(VENV)})[0]["sdist"])  # the script's own answer
    if cached.is_file():
        return cached
    folder = tmp_path_factory.mktemp("sdist")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "horovod==0.28.1", "-d", str(folder)], check=True, capture_output=True, timeout=600)
    return folder / "horovod-0.28.1.tar.gz"


def _run_build(tmp_path: Path, patch_text: str, sdist: Path) -> subprocess.CompletedProcess:
    patch = tmp_path / "bad.patch"
    patch.write_text(patch_text)
    env = {**os.environ, "HVDTRAIN_CACHE": str(tmp_path / "cache"), "HVDTRAIN_HOROVOD_PATCH": str(patch),
           "VENV": str(VENV), "HVDTRAIN_HOROVOD_SDIST": str(sdist)}
    return subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh")], env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


# A hunk that makes CMake's configure step fail at once (the rest of the build is not what is tested).
CONFIGURE_ERROR = ("--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1,3 +1,4 @@\n"
                   " cmake_minimum_required(VERSION 3.13 FATAL_ERROR)\n"
                   "+message(FATAL_ERROR \"hvdtrain test: a deliberately broken build\")\n"
                   " if(POLICY CMP0074)\n"
                   "     # 1. Introduced with 3.12.4.\n")


def test_broken_build_keeps_its_log_and_names_the_first_error(tmp_path: Path, horovod_sdist: Path) -> None:
    proc = _run_build(tmp_path, CONFIGURE_ERROR, horovod_sdist)
    assert proc.returncode != 0
    log = tmp_path / "cache" / "last-horovod-build.log"
    assert log.is_file(), proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, not pip's tail
    assert "CMake Error at CMakeLists.txt:2 (message): hvdtrain test: a deliberately broken build" in lines[0]
    assert "a deliberately broken build" in lines[0]
    assert f"full log: {log}" in lines[0]
    assert "a deliberately broken build" in log.read_text()
    assert not list((tmp_path / "cache").glob("horovod-*")), "a failed build must leave no cached wheel"


def test_patch_that_does_not_apply_is_named(tmp_path: Path, horovod_sdist: Path) -> None:
    hunk = ("--- a/CMakeLists.txt\n+++ b/CMakeLists.txt\n@@ -1,1 +1,1 @@\n-this line is not in the file\n"
            "+nor is this one\n")
    proc = _run_build(tmp_path, hunk, horovod_sdist)
    assert proc.returncode != 0
    log = tmp_path / "cache" / "last-horovod-build.log"
    assert "could not apply" in proc.stderr and "Hunk #1 FAILED" in proc.stderr, proc.stderr
    assert f"full log: {log}" in proc.stderr and log.is_file()


# --- The CUDA setup path, without a GPU and without building ----------------------------------------------
# scripts/setup_env.sh --plan and scripts/build_horovod.sh --plan print what they would do as key=value lines;
# a fake nvidia-smi on PATH stands for a GPU, a fake nvidia/ tree for the CUDA wheels.

def _plan(script: str, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    proc = subprocess.run(["bash", str(REPO / "scripts" / script), "--plan"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    return dict(line.split("=", 1) for line in lines), lines


def _fake_bin(tmp_path: Path, gpus: list[tuple[str, str]] | None) -> Path:
    """A folder holding only a fake nvidia-smi: it lists `gpus` (name, compute capability), or fails like a
    machine whose driver is not loaded when None."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    smi = bin_dir / "nvidia-smi"
    if gpus is None:
        smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA "
                       "driver.'\nexit 9\n")
    else:
        listing = "".join(f"GPU {i}: {name} (UUID: GPU-{i})\\n" for i, (name, _) in enumerate(gpus))
        caps = "".join(f"{cc}\\n" for _, cc in gpus)
        smi.write_text('#!/bin/sh\ncase "$*" in\n  *compute_cap*) printf "' + caps + '" ;;\n'
                       '  -L) printf "' + listing + '" ;;\n  *) exit 2 ;;\nesac\n')
    smi.chmod(0o755)
    return bin_dir


def _env(tmp_path: Path, gpus: list[tuple[str, str]] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HVDTRAIN_DEVICE", "HOROVOD_BUILD_CUDA_CC_LIST", "HVDTRAIN_CUDA_HOME", "CUDA_HOME")}
    env["PATH"] = f"{_fake_bin(tmp_path, gpus)}:{env['PATH']}"
    env["HVDTRAIN_NVIDIA_GPUS_DIR"] = str(tmp_path / "no-such-dir")  # this machine's /proc must not count
    env["VENV"] = str(VENV)
    env["HVDTRAIN_CACHE"] = str(tmp_path / "cache")
    return {**env, **extra}


def _setup_env(tmp_path: Path, gpus: list[tuple[str, str]] | None = None, **extra: str) -> dict[str, str]:
    """For setup_env.sh --plan: a venv that does not exist yet (the test venv's own stack must not count)."""
    return _env(tmp_path, gpus, **{"VENV": str(tmp_path / "new-venv"), **extra})


H200 = [("NVIDIA H200", "9.0")]


@pytest.mark.parametrize(("gpus", "forced", "device", "reason"), [
    (H200, None, "cuda", "1 NVIDIA GPU(s) found"),
    ([("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA A100-SXM4-80GB", "8.0")], None, "cuda", "2 NVIDIA GPU(s) found"),
    (None, None, "cpu", "no NVIDIA GPU found"),  # nvidia-smi there, but no driver
    ([], None, "cpu", "no NVIDIA GPU found"),
    (H200, "cpu", "cpu", "HVDTRAIN_DEVICE=cpu"),
    (None, "cuda", "cuda", "HVDTRAIN_DEVICE=cuda"),
    (H200, "auto", "cuda", "1 NVIDIA GPU(s) found"),
])
def test_setup_picks_the_stack_from_the_gpus_or_hvdtrain_device(
        tmp_path: Path, gpus: list[tuple[str, str]] | None, forced: str | None, device: str, reason: str) -> None:
    env = _setup_env(tmp_path, gpus, **({"HVDTRAIN_DEVICE": forced} if forced else {}))
    plan, _ = _plan("setup_env.sh", env)
    assert plan["device"] == device and plan["device_reason"] == reason


def test_a_cuda_venv_stays_cuda_on_a_machine_without_gpu_unless_told(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".hvdtrain-device").write_text("cuda\n")
    plan, _ = _plan("setup_env.sh", _setup_env(tmp_path, None, VENV=str(venv)))
    assert plan["device"] == "cuda" and "holds the CUDA stack" in plan["device_reason"]
    plan, _ = _plan("setup_env.sh", _setup_env(tmp_path, None, VENV=str(venv), HVDTRAIN_DEVICE="cpu"))
    assert plan["device"] == "cpu"


def test_setup_counts_the_drivers_gpu_entries_without_nvidia_smi(tmp_path: Path) -> None:
    gpus_dir = tmp_path / "gpus"
    (gpus_dir / "0000:3b:00.0").mkdir(parents=True)
    plan, _ = _plan("setup_env.sh", _setup_env(tmp_path, [], HVDTRAIN_NVIDIA_GPUS_DIR=str(gpus_dir)))
    assert plan["device"] == "cuda" and plan["device_reason"] == "1 NVIDIA GPU(s) found"


def test_setup_rejects_an_unknown_device(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "setup_env.sh"), "--plan"],
                          env=_setup_env(tmp_path, None, HVDTRAIN_DEVICE="gpu"), capture_output=True, text=True)
    assert proc.returncode != 0 and "HVDTRAIN_DEVICE=gpu: use cuda, cpu or auto" in proc.stderr


def _requirement_names(lines: list[str]) -> list[str]:
    import re

    return [re.split(r"[\[=<>!~; ]", line.removeprefix("requirement="), maxsplit=1)[0].lower()
            for line in lines if line.startswith("requirement=")]


def test_cuda_requirements_replace_the_cpu_frameworks_and_keep_every_other_pin(tmp_path: Path) -> None:
    _, cpu = _plan("setup_env.sh", _setup_env(tmp_path, None, HVDTRAIN_DEVICE="cpu"))
    _, cuda = _plan("setup_env.sh", _setup_env(tmp_path, None, HVDTRAIN_DEVICE="cuda"))
    cpu_reqs = {line for line in cpu if line.startswith("requirement=")}
    cuda_reqs = {line for line in cuda if line.startswith("requirement=")}
    assert "requirement=torch==2.13.0" in cpu_reqs and "requirement=tensorflow-cpu==2.21.0" in cpu_reqs
    # The CUDA build of torch, by exact version string: a local 2.13.0+cpu wheel does not match "===".
    assert {"requirement=torch===2.13.0", "requirement=tensorflow[and-cuda]==2.21.0",
            "requirement=nvidia-cuda-nvcc==13.0.88", "requirement=nvidia-nvvm==13.0.88",
            "requirement=nvidia-cuda-crt==13.0.88"} <= cuda_reqs
    assert cpu_reqs - {"requirement=torch==2.13.0", "requirement=tensorflow-cpu==2.21.0"} <= cuda_reqs
    names = _requirement_names(cuda)
    assert "tensorflow-cpu" not in names and len(names) == len(set(names)), names


NVCC = "#!/bin/sh\necho 'nvcc: NVIDIA (R) Cuda compiler driver'\necho 'Cuda compilation tools, release {0}, V{1}'\n"


def _fake_wheels(root: Path, nvcc: str = "13.0.88", nccl: str = "2.29.7") -> Path:
    """The nvidia/ tree the CUDA wheels install, as far as the build plan reads it."""
    nvidia = root / "nvidia"
    (nvidia / "cu13" / "bin").mkdir(parents=True, exist_ok=True)
    (nvidia / "cu13" / "lib").mkdir(exist_ok=True)
    (nvidia / "nccl" / "include").mkdir(parents=True, exist_ok=True)
    tool = nvidia / "cu13" / "bin" / "nvcc"
    tool.write_text(NVCC.format(nvcc.rsplit(".", 1)[0], nvcc))
    tool.chmod(0o755)
    major, minor, patch = nccl.split(".")
    (nvidia / "nccl" / "include" / "nccl.h").write_text(
        f"#define NCCL_MAJOR {major}\n#define NCCL_MINOR {minor}\n#define NCCL_PATCH {patch}\n"
        '#define NCCL_SUFFIX ""\n')
    return nvidia


def test_cuda_build_plan_has_nccl_the_toolkit_and_a_cache_key_of_its_own(tmp_path: Path) -> None:
    nvidia = _fake_wheels(tmp_path / "w1")
    env = _env(tmp_path, None, HVDTRAIN_NVIDIA_DIR=str(nvidia))
    cpu, _ = _plan("build_horovod.sh", {**env, "HVDTRAIN_DEVICE": "cpu"})
    cuda, _ = _plan("build_horovod.sh", {**env, "HVDTRAIN_DEVICE": "cuda"})
    assert cuda["device"] == "cuda" and cuda["HOROVOD_GPU_OPERATIONS"] == "NCCL"
    for controller in ("HOROVOD_WITH_GLOO", "HOROVOD_WITH_MPI", "HOROVOD_WITH_PYTORCH", "HOROVOD_WITH_TENSORFLOW"):
        assert cuda[controller] == "1" and cpu[controller] == "1"
    assert "HOROVOD_TORCH_WITHOUT_CUDA" not in cuda and cpu["HOROVOD_TORCH_WITHOUT_CUDA"] == "1"
    assert "HOROVOD_GPU_OPERATIONS" not in cpu
    # The wheels' toolkit and NCCL through folders of links made in the build's scratch folder.
    assert cuda["HOROVOD_CUDA_HOME"] == cuda["CUDA_HOME"] == "BUILD_DIR/cuda-toolkit"
    assert cuda["HOROVOD_NCCL_HOME"] == "BUILD_DIR/nccl" and cuda["HOROVOD_NCCL_LINK"] == "SHARED"
    assert cuda["LIBRARY_PATH"].split(":")[0] == str(nvidia / "cu13" / "lib")
    assert cuda["PATH"].startswith(f"BUILD_DIR/cuda-toolkit/bin:{VENV}/bin:")
    assert cuda["HOROVOD_BUILD_CUDA_CC_LIST"] == "90"  # no GPU to ask: Hopper
    assert cuda["cuda_version"] == "13.0.88" and cuda["nccl_version"] == "2.29.7" and cuda["toolkit"] == "wheels"
    assert cuda["patches"].split() == [str(REPO / "scripts" / "horovod-0.28.1.patch"),
                                       str(REPO / "scripts" / "horovod-0.28.1-cuda.patch")]
    assert cpu["patches"].split() == [str(REPO / "scripts" / "horovod-0.28.1.patch")]
    assert cuda["key"] != cpu["key"] and "-cuda-" in cuda["wheel_dir"] and "-cuda-" not in cpu["wheel_dir"]
    assert cuda["wheel_dir"].startswith(str(tmp_path / "cache"))

    # The key follows the NCCL and CUDA versions and the compute capabilities.
    other_nccl = _fake_wheels(tmp_path / "w2", nccl="2.32.3")
    other_nvcc = _fake_wheels(tmp_path / "w3", nvcc="13.0.48")
    cuda_env = {**env, "HVDTRAIN_DEVICE": "cuda"}
    keys = {cuda["key"],
            _plan("build_horovod.sh", {**cuda_env, "HVDTRAIN_NVIDIA_DIR": str(other_nccl)})[0]["key"],
            _plan("build_horovod.sh", {**cuda_env, "HVDTRAIN_NVIDIA_DIR": str(other_nvcc)})[0]["key"],
            _plan("build_horovod.sh", {**cuda_env, "HOROVOD_BUILD_CUDA_CC_LIST": "80,90"})[0]["key"]}
    assert len(keys) == 4


def test_cpu_build_key_is_the_one_from_before_the_cuda_build(tmp_path: Path) -> None:
    """The CPU key's fields and format are those of the CPU-only setup, so that cached CPU wheels (CI's) stay
    valid: sha256 of "horovod version|python, torch, torch's CUDA, tensorflow-cpu versions|mpirun --version's
    first line|the patch's sha256 (16 hex)", 16 hex."""
    import hashlib

    plan, _ = _plan("build_horovod.sh", _env(tmp_path, H200, HVDTRAIN_DEVICE="cpu"))
    patch_hash = hashlib.sha256((REPO / "scripts" / "horovod-0.28.1.patch").read_bytes()).hexdigest()[:16]
    fields = f"0.28.1|{plan['versions']}|{plan['mpi']}|{patch_hash}"
    assert plan["key"] == hashlib.sha256(fields.encode()).hexdigest()[:16]
    assert plan["wheel_dir"] == str(tmp_path / "cache" / f"horovod-0.28.1-{plan['key']}")
    assert plan["versions"].split()[3].startswith("tf")


def test_debug_information_is_opt_in_and_another_cache_key(tmp_path: Path) -> None:
    """Horovod is built without -g unless HVDTRAIN_HOROVOD_DEBUG_INFO=1 (the patch drops it from RelWithDebInfo's
    flags, read by the build's CMake from this variable); a build with it is another wheel in the cache."""
    env = _env(tmp_path, H200, HVDTRAIN_DEVICE="cpu")
    plain, plain_lines = _plan("build_horovod.sh", env)
    debug, debug_lines = _plan("build_horovod.sh", {**env, "HVDTRAIN_HOROVOD_DEBUG_INFO": "1"})
    assert "HVDTRAIN_HOROVOD_DEBUG_INFO=0" in plain_lines and "HVDTRAIN_HOROVOD_DEBUG_INFO=1" in debug_lines
    assert plain["key"] != debug["key"]
    patch = (REPO / "scripts" / "horovod-0.28.1.patch").read_text()
    assert '$ENV{HVDTRAIN_HOROVOD_DEBUG_INFO}' in patch and 'string(REPLACE "-g" ""' in patch
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh"), "--plan"],
                          env={**env, "HVDTRAIN_HOROVOD_DEBUG_INFO": "yes"}, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0 and "HVDTRAIN_HOROVOD_DEBUG_INFO=yes: use 0" in proc.stderr


@pytest.mark.parametrize(("gpus", "cc_env", "expected"), [
    ([("NVIDIA H100 80GB HBM3", "9.0"), ("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA H100 80GB HBM3", "9.0")], None,
     "80,90"),
    (H200, "75,120", "75,120"),  # HOROVOD_BUILD_CUDA_CC_LIST wins
    (None, None, "90"),
])
def test_cuda_compute_capabilities(tmp_path: Path, gpus: list[tuple[str, str]] | None, cc_env: str | None,
                                   expected: str) -> None:
    env = _env(tmp_path, gpus, **({"HOROVOD_BUILD_CUDA_CC_LIST": cc_env} if cc_env else {}))
    proc = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/common.sh"; choose_cc_list; echo "$CC_LIST"'],
                          env=env, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == expected


def test_cuda_build_refuses_gpus_that_cuda_13_cannot_build_for(tmp_path: Path) -> None:
    env = _env(tmp_path, [("Tesla V100-SXM2-32GB", "7.0")])
    proc = subprocess.run(["bash", "-c", f'source "{REPO}/scripts/common.sh"; choose_cc_list'], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "compute capability 70 is below 7.5" in proc.stderr


def test_cuda_build_with_a_system_toolkit(tmp_path: Path) -> None:
    nvidia = _fake_wheels(tmp_path / "w")
    home = tmp_path / "cuda-13.0"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "nvcc").write_text(NVCC.format("13.0", "13.0.48"))
    (home / "bin" / "nvcc").chmod(0o755)
    plan, _ = _plan("build_horovod.sh", _env(tmp_path, H200, HVDTRAIN_DEVICE="cuda", HVDTRAIN_NVIDIA_DIR=str(nvidia),
                                             HVDTRAIN_CUDA_HOME=str(home)))
    assert plan["HOROVOD_CUDA_HOME"] == plan["CUDA_HOME"] == str(home) and plan["toolkit"] == f"system:{home}"
    assert plan["cuda_version"] == "13.0.48" and plan["LIBRARY_PATH"].split(":")[0] == str(home / "lib64")
    assert plan["HOROVOD_NCCL_HOME"] == "BUILD_DIR/nccl"  # NCCL still from the wheel
    assert plan["HOROVOD_BUILD_CUDA_CC_LIST"] == "90"  # the fake H200's


def test_cuda_build_without_the_cuda_wheels_names_the_fix(tmp_path: Path) -> None:
    env = _env(tmp_path, None, HVDTRAIN_DEVICE="cuda", HVDTRAIN_NVIDIA_DIR=str(tmp_path / "nothing"))
    proc = subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh"), "--plan"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "HVDTRAIN_DEVICE=cuda make setup" in proc.stderr


def test_offline_build_plan_is_torch_and_gloo_from_the_bundled_source(tmp_path: Path) -> None:
    """scripts/gpu_check.sh --offline's build (the lent GPU machines: no TensorFlow, no MPI, no network): PyTorch
    only, Gloo only, from a source file; a key of its own, so the full build's cached wheel is never taken."""
    sdist = tmp_path / "horovod-0.28.1.tar.gz"
    sdist.write_bytes(b"")
    full, _ = _plan("build_horovod.sh", _env(tmp_path, None, HVDTRAIN_DEVICE="cpu"))
    plan, lines = _plan("build_horovod.sh", _env(tmp_path, None, HVDTRAIN_DEVICE="cpu", HVDTRAIN_HOROVOD_MPI="0",
                                                 HVDTRAIN_HOROVOD_FRAMEWORKS="torch",
                                                 HVDTRAIN_HOROVOD_SDIST=str(sdist)))
    assert {"HOROVOD_WITH_PYTORCH=1", "HOROVOD_WITHOUT_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1",
            "HOROVOD_WITHOUT_MPI=1"} <= set(lines)
    assert not {"HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_MPI=1"} & set(lines)
    assert plan["frameworks"] == "torch" and plan["mpi"] == "no MPI" and plan["sdist"] == str(sdist)
    assert plan["versions"].split()[3] == "tfnone" and plan["key"] != full["key"]
    assert full["frameworks"] == "torch tensorflow" and full["sdist"] == "download"
    kept = tmp_path / "cache" / "horovod-0.28.1.tar.gz"  # a download an earlier build kept: not downloaded again
    kept.parent.mkdir(exist_ok=True)
    kept.write_bytes(b"")
    assert _plan("build_horovod.sh", _env(tmp_path, None, HVDTRAIN_DEVICE="cpu"))[0]["sdist"] == str(kept)
    for knob, value, fix in (("HVDTRAIN_HOROVOD_MPI", "2", "use 1 (MPI and Gloo) or 0 (Gloo only)"),
                             ("HVDTRAIN_HOROVOD_FRAMEWORKS", "keras", 'use "torch tensorflow" or torch'),
                             ("HVDTRAIN_HOROVOD_SDIST", str(tmp_path / "none.tar.gz"), "gpu_check_bundle.sh makes it")):
        proc = subprocess.run(["bash", str(REPO / "scripts" / "build_horovod.sh"), "--plan"],
                              env=_env(tmp_path, None, HVDTRAIN_DEVICE="cpu", **{knob: value}),
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and fix in proc.stderr and proc.stderr.count("\n") == 1, (knob, proc.stderr)


def test_gpu_check_refuses_an_unknown_option() -> None:
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--ofline"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "usage: bash scripts/gpu_check.sh [--offline]"


def test_horovodrun_answers_its_build_checks_from_the_build_facts() -> None:
    """horovodrun asks whether Horovod has Gloo and MPI before every launch; upstream answers by importing a
    framework's extension in a forked process (2-3 s a launch). The patched build answers from the facts
    scripts/build_horovod.sh wrote, and they must be what the torch extension itself says."""
    probe = ("import horovod.common.util as u\n"
             "def forked(*args):\n"
             "    raise AssertionError('imported an extension to answer: %s' % (args,))\n"
             "u._check_extension_lambda = forked\n"
             "print(u.gloo_built(), u.mpi_built())\n")
    facts = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert facts.returncode == 0, facts.stderr
    truth = subprocess.run([sys.executable, "-c", "import horovod.torch as h; print(h.gloo_built(), h.mpi_built())"],
                           capture_output=True, text=True, timeout=120)
    assert truth.returncode == 0, truth.stderr
    assert facts.stdout.split() == truth.stdout.split() == ["True", "True"]  # this build: Gloo and MPI
