"""`export` (hvdtrain/lifecycle/export.py): every format of each backend written from a tiny trained run, loaded
back here with its own runtime and compared with the trained model's logits; and the one-line errors.

Each backend's exports run in a process of their own (only that framework imported); the error cases that
stop before the framework is needed run in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import run_pool
from conftest import REPO
from run_pool import PoolRun

from hvdtrain.errors import UserError
from hvdtrain.lifecycle import export as export_module
from hvdtrain.lifecycle.export import export_run

TOLERANCE = 1e-4
TINY = ["data.name=digits", "train.epochs=1", "train.max_steps_per_epoch=3", "run.progress=off",
        "run.tensorboard=false"]
# The standardisation built into the artifacts: rescale and featurewise statistics, or samplewise (with BatchNorm).
MODELS = {
    "cnn": ["model.name=cnn", "model.channels=[4]", "model.hidden_units=[8]", "augment.rescale=2.0",
            "augment.featurewise_center=true", "augment.featurewise_std_normalization=true"],
    "resnet": ["model.name=resnet", "model.depth=8", "model.width_multiplier=0.25", "augment.samplewise_center=true",
               "augment.samplewise_std_normalization=true"],
}
# (model, format, with --checkpoint) exported for each backend: every format, BatchNorm in at least one.
JOBS = {
    "torch": [("cnn", "onnx", False), ("cnn", "torch-export", False), ("resnet", "onnx", False),
              ("resnet", "torch-export", True)],
    "tensorflow": [("cnn", "savedmodel", False), ("cnn", "onnx", False), ("resnet", "onnx", False),
                   ("resnet", "savedmodel", True)],
}
FRAMEWORKS = {"torch": {"torch"}, "tensorflow": {"tensorflow", "keras"}}

# Exports, then runs each artifact with its runtime as a user would, on other validation images than the
# command's check (the last 50, and one alone), against TrainedModel.logits on the images as stored. Then an export
# whose standardisation is left out: the check must refuse it and leave nothing behind.
EXPORT_AND_COMPARE = """
import json, sys
from pathlib import Path
import numpy as np
from hvdtrain.data import load_dataset
from hvdtrain.errors import UserError
from hvdtrain.lifecycle import export as export_module
from hvdtrain.lifecycle.finished_run import open_run
from hvdtrain.lifecycle.trained_model import load_trained_model

def run_artifact(fmt, path, images):
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"images": images})[0]
    if fmt == "torch-export":
        import torch
        module = torch.export.load(path).module()
        with torch.no_grad():
            return module(torch.from_numpy(images)).numpy()
    import tensorflow as tf
    loaded = tf.saved_model.load(path)
    return loaded.signatures["serving_default"](images=tf.constant(images))["logits"].numpy()

results = []
for run_dir, fmt, out, checkpoint in json.loads(sys.argv[1]):
    result = export_module.export_run(run_dir, fmt, out, checkpoint)
    run = open_run(run_dir, "test")
    val = load_dataset(run.cfg.data, run.cfg.seed).val
    stored = val.read(np.arange(len(val) - 50, len(val)))[0]  # uint8, or float32 in [0, 1] (digits)
    trained = load_trained_model(run)
    if checkpoint:
        trained.backend.load(Path(checkpoint), "checkpoint")
    expected = trained.logits(stored)
    images = stored.astype(np.float32) / 255 if stored.dtype == np.uint8 else stored
    diffs = [float(np.abs(run_artifact(fmt, out, x) - expected[:len(x)]).max()) for x in (images, images[:1])]
    results.append({"line": result.line(), "check": result.max_diff, "images": result.images, "diffs": diffs})

run_dir, fmt, out, _ = json.loads(sys.argv[2])
export_module.run_standardization = lambda run: export_module.Standardization()
try:
    export_module.export_run(run_dir, fmt, out, None)
    refused = None
except UserError as exc:
    refused = str(exc)
parent = Path(out).parent
print("RESULTS", json.dumps({"results": results, "refused": refused,
                             "left": sorted(p.name for p in parent.iterdir()) if parent.exists() else [],
                             "modules": sorted(m for m in ("torch", "tensorflow", "keras") if m in sys.modules)}))
"""


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """A finished tiny run per backend and model, root/<backend>-<model>, one process each (pooled with other
    modules' runs, tests/run_pool.py)."""
    return [PoolRun(backend, 1, (f"backend={backend}", *TINY, *MODELS[model], f"run.dir={root / f'{backend}-{model}'}"))
            for backend in JOBS for model in MODELS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = run_pool.trained(__file__, tmp_path_factory)
    return {(backend, model): root / f"{backend}-{model}" for backend in JOBS for model in MODELS}


def export_in_process(backend: str, runs: dict[tuple[str, str], Path], out: Path) -> dict:
    jobs = [[str(runs[backend, model]), fmt, str(out / f"{model}-{fmt}{'-ckpt' if ckpt else ''}"),
             str(runs[backend, model] / "checkpoints" / "epoch-0001") if ckpt else None]
            for model, fmt, ckpt in JOBS[backend]]
    refused = [str(runs[backend, "cnn"]), JOBS[backend][0][1], str(out / "refused" / "model"), None]
    proc = subprocess.run([sys.executable, "-c", EXPORT_AND_COMPARE, json.dumps(jobs), json.dumps(refused)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")][-1]
    return dict(json.loads(line[len("RESULTS "):]))


@pytest.fixture(scope="module")
def exported(runs: dict[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Both backends' exports, each in its own process, in parallel."""
    out = tmp_path_factory.mktemp("exports")
    with ThreadPoolExecutor(2) as pool:
        done = {backend: pool.submit(export_in_process, backend, runs, out / backend) for backend in JOBS}
    return {backend: future.result() for backend, future in done.items()}


@pytest.mark.parametrize("backend", list(JOBS))
def test_every_format_matches_the_trained_model(exported: dict[str, dict], backend: str) -> None:
    got = exported[backend]
    assert set(got["modules"]) == FRAMEWORKS[backend], "only the run's framework is imported"
    assert len(got["results"]) == len(JOBS[backend])
    for (model, fmt, _), result in zip(JOBS[backend], got["results"], strict=True):
        assert result["check"] <= TOLERANCE and result["images"] == 64, (model, fmt, result)
        assert max(result["diffs"]) <= TOLERANCE, (model, fmt, result)  # batch of 50, and of 1: dynamic batch
        assert result["line"].startswith("exported ") and f"({fmt}, " in result["line"], result["line"]
        assert "max |logit diff|" in result["line"] and "on 64 validation images" in result["line"]


@pytest.mark.parametrize("backend", list(JOBS))
def test_a_failed_check_writes_nothing(exported: dict[str, dict], backend: str) -> None:
    got = exported[backend]
    assert got["refused"] is not None and "differ from the trained model's" in got["refused"], got["refused"]
    assert "\n" not in got["refused"]
    assert got["left"] == [], "neither the artifact nor its staging directory is left"


def test_default_output_paths(runs: dict[tuple[str, str], Path]) -> None:
    run = export_module.open_run(runs["torch", "cnn"], "test")
    assert export_module.output_path(run, "onnx", None) == run.dir / "export" / "model.onnx"
    assert export_module.output_path(run, "torch-export", None) == run.dir / "export" / "model.pt2"
    assert export_module.output_path(run, "savedmodel", None) == run.dir / "export" / "savedmodel"


def test_unknown_format_names_the_offered_ones(runs: dict[tuple[str, str], Path]) -> None:
    with pytest.raises(UserError, match=r"'bogus' is unknown: a torch run exports to onnx, torch-export$"):
        export_run(str(runs["torch", "cnn"]), "bogus", None, None)


def test_torch_format_on_a_tensorflow_run(runs: dict[tuple[str, str], Path]) -> None:
    with pytest.raises(UserError, match=r"'torch-export' is not offered for tensorflow runs: a tensorflow run "
                                        r"exports to savedmodel, onnx$"):
        export_run(str(runs["tensorflow", "cnn"]), "torch-export", None, None)
    with pytest.raises(UserError, match="'savedmodel' is not offered for torch runs"):
        export_run(str(runs["torch", "cnn"]), "savedmodel", None, None)


def test_not_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds no config.yaml"):
        export_run(str(tmp_path), "onnx", None, None)
    (tmp_path / "config.yaml").write_text("backend: torch\n")
    with pytest.raises(UserError, match="has no summary.json: the run did not finish"):
        export_run(str(tmp_path), "onnx", None, None)


def test_missing_runtime_package_names_it(runs: dict[tuple[str, str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_module.find_spec
    monkeypatch.setattr(export_module, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    with pytest.raises(UserError, match=r"needs the Python package 'onnxruntime', which is not installed: run "
                                        r"`make setup`"):
        export_run(str(runs["tensorflow", "cnn"]), "onnx", None, None)


def test_out_of_the_wrong_kind(runs: dict[tuple[str, str], Path], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a directory, but --format onnx writes a file"):
        export_run(str(runs["torch", "cnn"]), "onnx", str(tmp_path), None)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is a directory holding other files"):
        export_run(str(runs["tensorflow", "cnn"]), "savedmodel", str(tmp_path), None)
    with pytest.raises(UserError, match="is a file, but --format savedmodel writes a directory"):
        export_run(str(runs["tensorflow", "cnn"]), "savedmodel", str(tmp_path / "notes.txt"), None)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_result_line() -> None:
    result = export_module.ExportResult(Path("runs/a"), "torch", "onnx", Path("runs/a/export/model.onnx"),
                                        1_234_567, 2.4e-7, 64, "validation")
    assert result.line() == ("exported runs/a (torch) to runs/a/export/model.onnx (onnx, 1.2 MB): max |logit diff| "
                             "2.4e-07 vs the trained model on 64 validation images")
    assert export_module.human_size(812) == "812 B" and export_module.human_size(32_493) == "32.5 kB"
