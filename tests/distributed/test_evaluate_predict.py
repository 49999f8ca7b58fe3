"""`evaluate` and `predict` on finished runs of both backends, under real launchers: evaluation repeats the
run's final validation numbers exactly, predict agrees with it, and bad input is one line, exit 2."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import run_pool
from conftest import read_metrics, run_hvdtrain, together
from PIL import Image
from run_pool import PoolRun

pytestmark = pytest.mark.distributed

TRAIN = ["model.name=cnn", "model.channels=[8]", "model.hidden_units=[32]", "train.epochs=2", "run.progress=off",
         "augment.rescale=2.0", "augment.featurewise_center=true", "augment.featurewise_std_normalization=true"]


@run_pool.builder(__file__)
def pooled(root: Path) -> list[PoolRun]:
    """A finished np=2 digits run per backend, root/<backend> (featurewise statistics on, so the preprocessing is
    exercised), pooled with other modules' runs (tests/run_pool.py)."""
    return [PoolRun(backend, 2, (*TRAIN, f"backend={backend}", f"run.dir={root / backend}"))
            for backend in ("torch", "tensorflow")]


def finished_run(backend: str, factory: pytest.TempPathFactory) -> Path:
    return run_pool.trained(__file__, factory) / backend


@pytest.fixture(scope="module", params=["torch", "tensorflow"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return finished_run("torch", tmp_path_factory)


def validation_arrays(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation split, as the trainer sees it (its config, its seed)."""
    from dataset_arrays import arrays

    from hvdtrain.config import load_config
    from hvdtrain.data import load_dataset

    cfg = load_config(run_dir / "config.yaml")
    data = arrays(load_dataset(cfg.data, cfg.seed))
    return data.x_val, data.y_val


def test_evaluate_repeats_the_runs_final_validation(trained: Path) -> None:
    """Under mpirun at np=2; evaluations in one process repeat runs' numbers too (tests/distributed/test_batchnorm.py,
    and test_evaluate_other_data below)."""
    launcher, np_ = "mpirun", 2
    out = run_hvdtrain(["evaluate", str(trained)], launcher=launcher, np_=np_)
    report = json.loads((trained / "eval.json").read_text())
    final = read_metrics(trained)[-1]
    print(out.stdout.strip().splitlines()[-1])
    assert report["val_accuracy"] == final["val_accuracy"]  # a count of correct samples: exactly
    assert report["val_loss"] == pytest.approx(final["val_loss"], rel=1e-6)  # up to float summation order
    assert report["samples"] == 359 and report["world_size"] == np_
    confusion = np.array(report["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 359
    assert np.trace(confusion) == round(final["val_accuracy"] * 359)
    per_class = report["per_class_accuracy"]
    assert list(per_class) == [str(c) for c in range(10)]
    assert per_class["3"] == pytest.approx(confusion[3, 3] / confusion[3].sum())
    assert (trained / "eval-confusion.png").stat().st_size > 1000
    assert "val_accuracy" in out.stdout and out.stdout.count("evaluated ") == 1  # rank 0 alone prints


def test_predict_agrees_with_evaluate(trained: Path, tmp_path: Path) -> None:
    x_val, y_val = validation_arrays(trained)
    np.savez(tmp_path / "val.npz", x=x_val)
    out = tmp_path / "preds.csv"
    run_hvdtrain(["predict", str(trained), str(tmp_path / "val.npz"), "--out", str(out), "--top-k", "3",
                  "--batch-size", "50"], launcher="mpirun", np_=2)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 359 and rows[0]["input"] == f"{tmp_path / 'val.npz'}[0]"
    assert [r["input"] for r in rows] == [f"{tmp_path / 'val.npz'}[{i}]" for i in range(359)]  # input order
    predicted = np.array([int(r["class_index"]) for r in rows])
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (y_val, predicted), 1)
    report = json.loads((trained / "eval.json").read_text()) if (trained / "eval.json").exists() else None
    if report is None:
        run_hvdtrain(["evaluate", str(trained)])
        report = json.loads((trained / "eval.json").read_text())
    assert confusion.tolist() == report["confusion_matrix"]
    first = rows[0]
    probs = [float(first["probability"]), float(first["top2_probability"]), float(first["top3_probability"])]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.000001
    assert first["class_name"] == first["class_index"]  # digits' class names are "0".."9"


def test_predict_reads_image_files_and_folders(torch_run: Path, tmp_path: Path) -> None:
    trained = torch_run
    x_val, _ = validation_arrays(trained)
    folder = tmp_path / "imgs" / "nested"
    folder.mkdir(parents=True)
    for i in range(3):  # 16x16 files: resized to the model's 8x8
        Image.fromarray((x_val[i, ..., 0] * 255).round().astype(np.uint8)).resize((16, 16)).save(folder / f"{i}.png")
    single = tmp_path / "one.png"
    Image.fromarray((x_val[5, ..., 0] * 255).round().astype(np.uint8)).save(single)
    out = tmp_path / "p.csv"
    run_hvdtrain(["predict", str(trained), str(tmp_path / "imgs"), str(single), "--out", str(out)])
    rows = list(csv.DictReader(out.open()))
    assert [r["input"] for r in rows] == [str(folder / f"{i}.png") for i in range(3)] + [str(single)]
    assert all(0 <= int(r["class_index"]) <= 9 for r in rows)


def test_evaluate_other_data(trained: Path, tmp_path: Path) -> None:
    x_val, y_val = validation_arrays(trained)
    np.savez(tmp_path / "test.npz", x=x_val[:40], y=y_val[:40], x_val=x_val[40:140], y_val=y_val[40:140])
    out = run_hvdtrain(["evaluate", str(trained), "data.name=npz", f"data.path={tmp_path / 'test.npz'}"])
    report = json.loads((trained / "eval.json").read_text())
    assert report["samples"] == 100 and str(tmp_path / "test.npz") in report["data"]
    assert "100 samples" in out.stdout


@pytest.mark.races
def test_bad_input_is_one_line_exit_2(torch_run: Path, tmp_path: Path) -> None:
    """Backend-neutral checks, on the torch run."""
    trained = torch_run
    def fails(args: list[str], fragment: str, np_: int = 1) -> Callable[[], None]:
        def check() -> None:
            proc = run_hvdtrain(args, launcher="mpirun" if np_ > 1 else "single", np_=np_, check=False)
            errors = [line for line in proc.stderr.splitlines() if "hvdtrain: error:" in line]
            assert proc.returncode == 2 and errors and fragment in errors[0], proc.stderr[-2000:]
            assert "Traceback" not in proc.stderr
        return check

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text((trained / "config.yaml").read_text())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    other = tmp_path / "other"
    backend = json.loads((trained / "summary.json").read_text())["backend"]
    together(fails(["evaluate", str(tmp_path / "half")], "did not finish"),
             fails(["evaluate", str(tmp_path)], "not a run directory"),
             fails(["evaluate", str(trained), "model.name=mlp"], "only data.* and train.eval_batch_size"),
             fails(["predict", str(trained), str(broken), "--out", str(tmp_path / "p.csv")], f"cannot read {broken}",
                   np_=2),
             lambda: run_hvdtrain(["model.name=mlp", "train.epochs=1", "train.max_steps_per_epoch=2",
                                   "run.progress=off", f"backend={backend}", f"run.dir={other}"]))
    assert not (tmp_path / "p.csv").exists()
    checkpoint = next((other / "checkpoints").glob("epoch-*"))
    fails(["evaluate", str(trained), "--checkpoint", str(checkpoint)], "another architecture")()
