"""`python -m hvdtrain predict RUN_DIR INPUT... [--out preds.csv] [--top-k K]`: classify images with a finished
run's model. INPUTs are image files, folders of images (searched recursively, in name order) or .npz files
with an array `x` of NHWC images (uint8, or float in [0, 1]). Images get the run's preprocessing: resized to
its input size (files), then its rescale and sample- and featurewise normalisation. Under a launcher each
rank classifies its share; rank 0 writes the CSV, one row per image in input order:
    input, class_index, class_name, probability, then top2_class, top2_probability ... for --top-k K.
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
        if x.ndim == 3:
            x = x[..., None]
        if tuple(x.shape[1:]) != run.image_shape:
            raise DataError(f"predict: '{path}' holds images of {list(x.shape[1:])} but the model takes "
                            f"{list(run.image_shape)}: resize them (or pass image files, which are resized)")
        return x if x.dtype == np.uint8 else x.astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def run_predict(run_dir: str, inputs: list[str], out: str, top_k: int, batch_size: int,
                checkpoint: str | None) -> None:
    """The command (see the module docstring)."""
    run = open_run(run_dir, "predict")
    classes = len(run.class_names)
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
        rows: list[tuple[int, list[int], list[float]]] = []
        failure: BaseException | None = None
        loader = BatchLoader(images.source, None, mine, batch_size, transform=model.preprocess())
        try:
            start = 0
            for batch in loader:
                probs = _softmax(model.inference.predict(batch[0]))
                order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
                for i, (ranked, p) in enumerate(zip(order, probs, strict=True)):
                    rows.append((int(mine[start + i]), ranked.tolist(), p[ranked].tolist()))
                start += len(batch[0])
        except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every rank
            failure = exc
        if collectives.any_rank(comm, failure is not None):
            collectives.raise_agreed_failure(comm, failure)
        everyone = sorted(row for part in collectives.gather(comm, rows) for row in part)
        if world.rank == 0:
            _write_csv(Path(out), everyone, images.names, run, top_k)
            print(f"predicted {len(everyone)} image(s) with {run.dir} ({run.backend}); wrote {out}", flush=True)


def _write_csv(path: Path, rows: list[tuple[int, list[int], list[float]]], names: list[str], run: FinishedRun,
               top_k: int) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = [h for k in range(2, top_k + 1) for h in (f"top{k}_class", f"top{k}_probability")]
    writer.writerow(["input", "class_index", "class_name", "probability", *extra])
    for index, ranked, probs in rows:
        cells: list[object] = [names[index], ranked[0], run.class_names[ranked[0]], f"{probs[0]:.6f}"]
        for cls, prob in zip(ranked[1:], probs[1:], strict=True):
            cells += [run.class_names[cls], f"{prob:.6f}"]
        writer.writerow(cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
