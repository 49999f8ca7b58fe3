"""The GPU tier: runs where an NVIDIA GPU is visible (scripts/gpu_check.sh on a GPU machine), skips elsewhere.

Tolerances: accuracy targets as on the CPU (digits >= 0.95). Parity on GPUs compares float32 runs with TF32
switched off (NVIDIA_TF32_OVERRIDE=0), where only summation order differs between np=2 x B and np=1 x 2B:
max |diff| <= 1e-4 (cuDNN may pick different algorithms for the two batch sizes, looser than the CPU's 1e-5).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, max_weight_diff, read_summary, read_weights, run_hvdtrain


def visible_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(line.startswith("GPU ") for line in proc.stdout.splitlines()) if proc.returncode == 0 else 0


GPUS = visible_gpus()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(GPUS == 0, reason="no NVIDIA GPU visible (nvidia-smi lists none): "
                                                  "the GPU tier runs on GPU machines, see scripts/gpu_check.sh")]
two_gpus = pytest.mark.skipif(GPUS < 2, reason=f"needs 2 GPUs, {GPUS} visible")
BACKENDS = ["torch", "tensorflow"]
NO_TF32 = {"NVIDIA_TF32_OVERRIDE": "0"}


def test_doctor_reports_nccl_for_both_frameworks() -> None:
    proc = subprocess.run([sys.executable, "-m", "hvdtrain", "doctor", "--json"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for framework in BACKENDS:
        assert report[framework]["nccl"] is True, report[framework]
    assert report["gpus"] == GPUS


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_digits_train_on_the_gpu(tmp_path: Path, backend: str, precision: str) -> None:
    run_dir = tmp_path / "run"
    run_hvdtrain(["--config", "configs/digits.yaml", f"backend={backend}", f"policy.precision={precision}",
                  "run.progress=off", f"run.dir={run_dir}"])
    summary = read_summary(run_dir)
    assert summary["device"] in ("cuda:0", "gpu:0")
    assert summary["final"]["val_accuracy"] >= 0.95


@pytest.mark.parametrize("backend", BACKENDS)
def test_nccl_carries_the_gradients(tmp_path: Path, backend: str) -> None:
    # Horovod's timeline names the implementation of each collective: NCCL on a GPU build.
    run_dir = tmp_path / "run"
    np_ = min(GPUS, 2)
    run_hvdtrain(["--config", "configs/digits.yaml", f"backend={backend}", "train.epochs=1", "run.progress=off",
                  "horovod.timeline=timeline.json", f"run.dir={run_dir}"], launcher="horovodrun" if np_ > 1 else
                 "single", np_=np_)
    timeline = (run_dir / "timeline.json").read_text()
    assert "NCCL" in timeline


@two_gpus
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_gpus_equal_one_gpu_with_double_batch(tmp_path: Path, small_config: Path, backend: str) -> None:
    cfg = ["--config", str(small_config), f"backend={backend}"]
    run_hvdtrain([*cfg, "train.batch_size=32", "optim.lr=0.2", f"run.dir={tmp_path / 'np1'}"], env=NO_TF32)
    run_hvdtrain([*cfg, "train.batch_size=16", f"run.dir={tmp_path / 'np2'}"], launcher="horovodrun", np_=2,
                 env=NO_TF32)
    assert max_weight_diff(read_weights(tmp_path / "np2"), read_weights(tmp_path / "np1")) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_augmentation_on_the_gpu_gives_the_loader_pixels(tmp_path: Path, backend: str) -> None:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "device_augment.py"), backend, str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **NO_TF32})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] in ("cuda:0", "gpu:0")
    assert report["pixels_max_diff"] <= 1e-5 and report["weights_max_diff"] <= 1e-4
