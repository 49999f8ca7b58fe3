"""`hvdtrain.train(...)`: the trainer from a Python script, launched like the CLI (`horovodrun -np 2 python
my_script.py`), with Python objects where a config names import paths (docs/tasks.md, "The Python entry point")."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from hvdtrain.config import Config, config_from_tree, to_dict
from hvdtrain.imports import PYTHON_OBJECTS, path_of
from hvdtrain.registry import BACKEND_NAMES

ConfigLike = Config | Mapping[str, Any] | str | Path | None


def _tree(config: ConfigLike) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Config):
        return to_dict(config)
    if isinstance(config, (str, Path)):
        from hvdtrain.config import _read_yaml

        return _read_yaml(Path(config))
    return dict(config)


def _named_backend(config: ConfigLike, overrides: Iterable[str] | Mapping[str, Any]) -> str:
    """The backend the input names, torch where it names none (the Horovod that reports an early error)."""
    from hvdtrain.config import named_backend

    if isinstance(overrides, Mapping):
        named = overrides.get("backend")
        return named if named in BACKEND_NAMES else "torch"
    if config is None or isinstance(config, (str, Path)):
        return named_backend(config, list(overrides)) or "torch"
    tree = to_dict(config) if isinstance(config, Config) else config
    named = next((o.partition("=")[2] for o in overrides if o.startswith("backend=")), tree.get("backend"))
    return named if named in BACKEND_NAMES else "torch"


def _name(item: str | object) -> str:
    """A built-in's name or an import path as given; an object's path (hvdtrain.imports.path_of)."""
    return item if isinstance(item, str) else path_of(item)


def _factory(callback: object) -> Callable[[Config], object]:
    """callbacks.user entries are called with the Config: an instance given here is returned as it is."""
    def make(cfg: Config) -> object:
        return callback
    make.__name__ = type(callback).__name__.lower()
    return make


def resolve(config: ConfigLike = None, overrides: Iterable[str] | Mapping[str, Any] = (), *, model: object = None,
            loss: str | object = None, metrics: Iterable[str | object] | None = None, data: object = None,
            callbacks: Iterable[object] = ()) -> Config:
    """The Config that `train` runs: `config` (a Config, a nested dict or a YAML path), `overrides` (`key=value`
    texts or {dotted key: value}), then the objects in place of model.name, train.loss, train.metrics,
    data.name and callbacks.user (appended). A Config is taken with its resolved values (train.eval_batch_size,
    checkpoint.best_metric), as a finished run's config.yaml is."""
    objects: dict[str, Any] = {}
    if model is not None:
        objects["model.name"] = _name(model)
    if loss is not None:
        objects["train.loss"] = _name(loss)
    if metrics is not None:
        objects["train.metrics"] = [_name(m) for m in metrics]
    if data is not None:
        objects["data.name"] = _name(data)
    given = dict(overrides) if isinstance(overrides, Mapping) else None
    cfg = config_from_tree(_tree(config), given if given is not None else tuple(overrides))
    extra = [path_of(_factory(c)) for c in callbacks]
    if objects.get("data.name", "").startswith(f"{PYTHON_OBJECTS}:") and cfg.data.workers is None:
        # Data worker processes call the builder again, by its path: a script's own builder is known only here.
        objects["data.workers"] = 0
    if objects or extra:
        objects.setdefault("callbacks.user", [*cfg.callbacks.user, *extra])
        cfg = config_from_tree(to_dict(cfg), objects)
    return cfg


def train(config: ConfigLike = None, overrides: Iterable[str] | Mapping[str, Any] = (), *, model: object = None,
          loss: str | object = None, metrics: Iterable[str | object] | None = None, data: object = None,
          callbacks: Iterable[object] = ()) -> dict[str, Any]:
    """Trains under whatever launched this process (horovodrun, mpirun, srun, or none: one rank) and returns the
    run's summary (what summary.json holds), on every rank.

    - `model`: a function (model_cfg, input_shape, outputs) -> a framework model, like model.name by import path;
    - `loss`: a framework function (outputs, targets) -> per-sample losses, or a built-in's name;
    - `metrics`: built-in names, functions (outputs, targets) -> per-sample values, or objects with batch_sums and
      value (numpy, docs/tasks.md);
    - `data`: a function (data_cfg) -> dict(train=..., val=..., class_names=...), like data.name by import path;
    - `callbacks`: callback objects (hvdtrain.callbacks.Callback or any object with some of its hooks).

    A bad input raises hvdtrain.errors.UserError (a ConfigError, DataError, ...) on every rank, its one line already
    printed to stderr. Horovod stays up after a run that returns, so a script may train again (with the same
    horovod.* settings: Horovod reads them once, when it starts; MPI cannot start twice in a process), and is shut
    down when the process exits, or when a run raises.
    """
    from hvdtrain.backend import get_backend
    from hvdtrain.distributed.environment import under_launcher
    from hvdtrain.distributed.error_exit import announce, ending_with_errors_reported, wait_for_every_rank_before_start
    from hvdtrain.errors import UserError
    from hvdtrain.training.loop import train as train_loop

    try:
        cfg = resolve(config, overrides, model=model, loss=loss, metrics=metrics, data=data, callbacks=callbacks)
    except UserError as exc:
        if under_launcher():  # every rank's line out before any rank exits (hvdtrain/distributed/error_exit.py)
            wait_for_every_rank_before_start(exc, _named_backend(config, overrides))
        announce(exc)
        raise
    backend = get_backend(cfg.backend)
    with ending_with_errors_reported(backend.comm, keep_running=True):
        return train_loop(cfg, backend)
