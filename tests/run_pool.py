"""Training runs pooled across test modules: one start per backend and rank count for the whole session.

A test module whose runs differ from other modules' only in config registers a builder:

    @run_pool.builder(__file__)
    def pooled(root: Path) -> list[PoolRun]:
        ...  # write the inputs the runs need into root (data files, user modules), return the runs

and reads them with `run_pool.trained(__file__, tmp_path_factory)`, which returns the module's root. On the
first such call the pool calls the builder of every module the session runs (pytest's selection, given by
`select`), then trains all their runs in one `tests/scripts/train_many.py` job per (backend, ranks): np=2 under
mpirun, np=1 as one process. Each builder's root is on the jobs' PYTHONPATH, so its user modules import; their
names must differ across modules (checked).

What this saves: a TensorFlow rank spends about 6 s starting, a torch rank about 3 s; ten modules' np=2 runs
were ten jobs per backend. What pooled runs must share: Horovod's settings (no `horovod.*` override: it is read
once, at hvd.init), the environment, and no dependence on another run's output. Every pooled run is still the
real `train` (docs/testing.md, "Runs that differ only in config share a start"); a failing run fails the job
with its traceback, and every test reading the pool then reports that failure.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from conftest import REPO, together, train_many


@dataclass(frozen=True)
class PoolRun:
    """One training run: its backend, its rank count (1, or 2 under mpirun) and its `python -m hvdtrain` words
    (optionally `--config FILE`, then overrides, run.dir among them)."""

    backend: str
    ranks: int
    args: tuple[str, ...]


Builder = Callable[[Path], list[PoolRun]]

_BUILDERS: dict[str, Builder] = {}
_ROOTS: dict[str, Path] = {}
_SELECTED: set[str] | None = None  # test module files the session runs; None: not known (every registered one)
_FAILED: list[str] = []


def _key(module_file: str) -> str:
    return str(Path(module_file).resolve())


def builder(module_file: str) -> Callable[[Builder], Builder]:
    """Registers the decorated function as `module_file`'s builder."""
    def register(build: Builder) -> Builder:
        _BUILDERS[_key(module_file)] = build
        return build
    return register


def select(module_files: set[str]) -> None:
    """The test modules this session runs (conftest, after collection): only their builders are trained."""
    global _SELECTED
    _SELECTED = {_key(f) for f in module_files}


def trained(module_file: str, factory: pytest.TempPathFactory) -> Path:
    """`module_file`'s root, its runs trained (with every other selected module's runs not trained yet)."""
    key = _key(module_file)
    assert key in _BUILDERS, f"{module_file} registered no builder"
    if _FAILED:
        raise AssertionError(f"the pooled training job failed earlier in this session:\n{_FAILED[0]}")
    if key not in _ROOTS:
        pending = [k for k in _BUILDERS if k not in _ROOTS and (k == key or _SELECTED is None or k in _SELECTED)]
        try:
            _train(pending, factory)
        except AssertionError as error:
            _FAILED.append(str(error))
            raise
    return _ROOTS[key]


def _train(keys: list[str], factory: pytest.TempPathFactory) -> None:
    base = factory.mktemp("pool")
    runs: list[PoolRun] = []
    roots = {}
    for key in keys:
        root = base / Path(key).stem
        root.mkdir()
        found = _BUILDERS[key](root)
        for run in found:
            assert run.ranks in (1, 2) and f"backend={run.backend}" in run.args, run
            assert not any(word.startswith("horovod.") for word in run.args), \
                f"{key}: pooled runs share Horovod's settings (read once, at hvd.init): no horovod.* override"
        runs += found
        roots[key] = root
    modules = Counter(p.name for root in roots.values() for p in root.glob("*.py"))
    assert all(n == 1 for n in modules.values()), f"user modules of the same name in two builders: {modules}"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "scripts"), *map(str, roots.values())])}
    jobs = {}
    for backend in ("torch", "tensorflow"):
        for ranks in (2, 1):
            group = [list(run.args) for run in runs if run.backend == backend and run.ranks == ranks]
            if group:
                launch = {"launcher": "mpirun", "np_": 2} if ranks == 2 else {}
                jobs[backend, ranks] = partial(train_many, group, base / f"{backend}-np{ranks}.json", env=env,
                                               **launch)
    if all(ranks == 1 for _, ranks in jobs):  # one process per backend: both at once
        together(*jobs.values())
    else:  # a backend's np=2 job beside its np=1 process: three processes on two cores, one framework at a time
        for backend in ("torch", "tensorflow"):
            started = [job for (b, _), job in jobs.items() if b == backend]
            if started:
                together(*started)
    _ROOTS.update(roots)
