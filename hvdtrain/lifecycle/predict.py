"""`python -m hvdtrain predict RUN_DIR INPUT... [--out preds.csv] [--top-k K]`: a finished run's model applied to
new inputs. INPUTs are image files, folders of images (searched recursively, in name order) or .npz files with
an array `x` of NHWC images (uint8, or float in [0, 1]) or of (N, F) feature vectors. Images get the run's
preprocessing: resized to its input size (files), then its rescale and sample- and featurewise normalisation.
Under a launcher each rank predicts its share; rank 0 writes the CSV, one row per input in input order, with
columns by the run's task:
    classification: input, class_index, class_name, probability, then top2_class, top2_probability ... (--top-k)
    regression:     input, then one column per target (the model's values)
    multilabel:     input, labels (the predicted labels, ';'-joined: probability above 0.5), then one probability
                    column per label
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from hvdtrain.data import ArraySource, shard_for_eval
from hvdtrain.data.folder import FolderListing, FolderSource
from hvdtrain.data.images import IMAGE_SUFFIXES
from hvdtrain.data.loader import BatchLoader
from hvdtrain.data.source import Source
from hvdtrain.distributed.error_exit import ending_with_errors_reported
from hvdtrain.errors import DataError, UserError
from hvdtrain.files import write_atomic
from hvdtrain.lifecycle.finished_run import FinishedRun, checkpoint_source, open_run
from hvdtrain.lifecycle.trained_model import load_trained_model
from hvdtrain.training import collectives


class _Inputs:
    """The images of every INPUT, as one source of (image files) or (npz arrays), with their names."""

    def __init__(self, inputs: list[str], run: FinishedRun) -> None:
        files: list[str] = []
        arrays: list[np.ndarray] = []
        self.names: list[str] = []
        for item in inputs:
            path = Path(item)
            if path.is_dir():
                found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                               and not p.name.startswith("."))
                if not found:
                    raise DataError(f"predict: folder '{path}' holds no .png/.jpg/.jpeg images: pass image files "
                                    "or a folder of them")
                files += found
            elif path.suffix.lower() == ".npz":
                arrays.append(self._npz(path, run))
                self.names += [f"{path}[{i}]" for i in range(len(arrays[-1]))]
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                if not path.is_file():
                    raise DataError(f"predict: '{path}' does not exist: pass existing image files, folders or .npz")
                files.append(str(path))
            else:
                raise DataError(f"predict: '{path}' is not an image (.png, .jpg, .jpeg), a folder or an .npz: pass "
                                "one of those")
        if files and arrays:
            raise DataError("predict: pass either image files and folders, or .npz files, not both in one call")
        if files:
            if len(run.image_shape) != 3:
                raise DataError(f"predict: the model takes feature vectors of {run.image_shape[0]} values, not "
                                "images: pass an .npz with x of shape (N, F)")
            height, width, channels = run.image_shape
            self.names = files
            listing = FolderListing(files, np.zeros(len(files), dtype=np.int64), ())
            self.source: Source = FolderSource(listing, (height, width, channels), resize=True)
        else:
            x = np.concatenate(arrays)
            self.source = ArraySource(x, np.zeros(len(x), dtype=np.int64), "npz")

    @staticmethod
    def _npz(path: Path, run: FinishedRun) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data.files:
                    raise DataError(f"predict: '{path}' holds {sorted(data.files)} but no array 'x' of images: save "
                                    "it with numpy.savez(path, x=images)")
                x: np.ndarray = data["x"]
        except (OSError, ValueError) as exc:
            raise DataError(f"predict: '{path}' is not a readable .npz ({exc}): save it with "
                            "numpy.savez(path, x=images)") from None
        if x.ndim == 3 and len(run.image_shape) == 3:
            x = x[..., None]
        if tuple(x.shape[1:]) != run.image_shape:
            kind = "images" if len(run.image_shape) == 3 else "feature vectors"
            raise DataError(f"predict: '{path}' holds arrays of {list(x.shape[1:])} but the model takes {kind} of "
                            f"{list(run.image_shape)}: "
                            + ("resize them (or pass image files, which are resized)" if kind == "images" else
                               "pass the features the model was trained on"))
        return x if x.dtype == np.uint8 else x.astype(np.float32)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def run_predict(run_dir: str, inputs: list[str], out: str, top_k: int, batch_size: int,
                checkpoint: str | None) -> None:
    """The command (see the module docstring)."""
    run = open_run(run_dir, "predict")
    classes = len(run.class_names)
    if run.cfg.task != "classification" and top_k != 1:
        raise UserError(f"predict: --top-k ranks classes, but the run's task is {run.cfg.task}: leave --top-k out")
    if not 1 <= top_k <= classes:
        raise UserError(f"predict: --top-k {top_k} is outside 1..{classes} (the model's classes): pick one in range")
    if batch_size < 1:
        raise UserError(f"predict: --batch-size {batch_size} must be >= 1")
    images = _Inputs(inputs, run)
    model = load_trained_model(run, checkpoint_source(run, checkpoint, "predict"))
    comm = model.backend.comm
    with ending_with_errors_reported(comm):
        world = comm.world()
        mine = shard_for_eval(len(images.source), world.rank, world.size)
        rows: list[tuple[int, list[float]]] = []  # (input index, the model's outputs)
        failure: BaseException | None = None
        loader = BatchLoader(images.source, None, mine, batch_size, transform=model.preprocess())
        try:
            start = 0
            for batch in loader:
                outputs = model.inference.predict(batch[0])
                rows += [(int(mine[start + i]), row.tolist()) for i, row in enumerate(outputs)]
                start += len(batch[0])
        except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every rank
            failure = exc
        if collectives.any_rank(comm, failure is not None):
            collectives.raise_agreed_failure(comm, failure)
        everyone = sorted(row for part in collectives.gather(comm, rows) for row in part)
        if world.rank == 0:
            _write_csv(Path(out), everyone, images.names, run, top_k)
            print(f"predicted {len(everyone)} input(s) with {run.dir} ({run.backend}); wrote {out}", flush=True)


def _csv_rows(rows: list[tuple[int, list[float]]], names: list[str], run: FinishedRun,
              top_k: int) -> list[list[object]]:
    """The CSV's header and rows for the run's task (see the module docstring)."""
    outputs = np.array([values for _, values in rows], dtype=np.float32).reshape(len(rows), len(run.class_names))
    inputs = [names[index] for index, _ in rows]
    labels = run.class_names
    table: list[list[object]]
    if run.cfg.task == "regression":  # float32 values written with 9 significant digits: read back exactly
        table = [["input", *labels]]
        table += [[name, *(f"{v:.9g}" for v in row)] for name, row in zip(inputs, outputs, strict=True)]
        return table
    if run.cfg.task == "multilabel":
        table = [["input", "labels", *labels]]
        for name, row in zip(inputs, outputs, strict=True):
            predicted = ";".join(label for label, logit in zip(labels, row, strict=True) if logit > 0)
            table.append([name, predicted, *(f"{p:.6f}" for p in _sigmoid(row))])
        return table
    probs = _softmax(outputs)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    extra = [h for k in range(2, top_k + 1) for h in (f"top{k}_class", f"top{k}_probability")]
    table = [["input", "class_index", "class_name", "probability", *extra]]
    for name, ranked, p in zip(inputs, order, probs, strict=True):
        cells: list[object] = [name, int(ranked[0]), labels[ranked[0]], f"{p[ranked[0]]:.6f}"]
        for cls in ranked[1:]:
            cells += [labels[cls], f"{p[cls]:.6f}"]
        table.append(cells)
    return table


def _write_csv(path: Path, rows: list[tuple[int, list[float]]], names: list[str], run: FinishedRun,
               top_k: int) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(_csv_rows(rows, names, run, top_k))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
