"""`hvdtrain sweep`: a grid search that runs one `hvdtrain train` process (or launcher job) per combination.

Every trial is its own process: `[launcher words...] python -m hvdtrain train --config BASE <overrides>
<grid values> run.dir=OUT/trial-NNN run.overwrite=true`, its output in OUT/trial-NNN.log. Separate
processes keep one framework per process (trials may even differ in `backend`), give every trial a
fresh Horovod init/shutdown, and turn a crashing trial into a failed row instead of a dead sweep.
Without a launcher a trial is one local process (1 rank). See docs/sweep.md.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hvdtrain.config import load_config
from hvdtrain.errors import UserError
from hvdtrain.files import write_atomic
from hvdtrain.tasks.task import field_lower_is_better as lower_is_better
from hvdtrain.tracking.parent import SweepParent

RESERVED_KEYS = ("run.dir",)  # set per trial from --out
KILL_GRACE_S = 10.0
_CLOSERS = {"[": "]", "{": "}"}


class SweepFailed(UserError):
    """No trial of the sweep succeeded; exit 1."""

    exit_code = 1


@dataclass(frozen=True)
class Axis:
    """One grid dimension: a config key and the raw texts of its values (parsed later by load_config)."""

    key: str
    values: tuple[str, ...]


@dataclass
class Trial:
    """One combination of grid values and, once run, its results (a row of sweep.csv)."""

    index: int
    name: str
    values: dict[str, str]
    command: list[str]
    run_dir: Path
    result: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- the grid

def split_values(raw: str) -> list[str]:
    """Splits `raw` at commas outside brackets, braces and quotes: `[8],[8,16]` -> `[8]`, `[8,16]`;
    ValueError if they do not balance."""
    values, depth, quote, start = [], [], "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _CLOSERS:
            depth.append(_CLOSERS[ch])
        elif ch in "]}":
            if not depth or depth.pop() != ch:
                raise ValueError(f"unmatched '{ch}'")
        elif ch == "," and not depth:
            values.append(raw[start:i])
            start = i + 1
    if quote or depth:
        missing = quote or depth[-1]
        raise ValueError(f"missing closing {missing}")
    values.append(raw[start:])
    return [v.strip() for v in values]


def parse_axis(spec: str) -> Axis:
    """`key=v1,v2,...` as an Axis; every value must be non-empty."""
    key, sep, raw = spec.partition("=")
    key = key.strip()
    if not sep or not key or any(c.isspace() for c in key):
        raise UserError(f"--grid '{spec}' is not key=v1,v2,...: write it like optim.lr=0.1,0.01")
    try:
        values = split_values(raw)
    except ValueError as exc:
        raise UserError(f"--grid '{spec}': {exc}: balance the brackets and quotes") from None
    if any(not v for v in values):
        raise UserError(f"--grid '{spec}' has an empty value: separate values with single commas, "
                        "e.g. optim.lr=0.1,0.01")
    if key in RESERVED_KEYS:
        raise UserError(f"--grid '{spec}': {key} is set per trial by the sweep: choose the folder with --out")
    return Axis(key, tuple(values))


def parse_grid(specs: list[str]) -> list[Axis]:
    """The axes of `--grid` words, each key at most once."""
    if not specs:
        raise UserError("sweep needs at least one --grid key=v1,v2,...: e.g. --grid optim.lr=0.1,0.01")
    axes = [parse_axis(s) for s in specs]
    keys = [a.key for a in axes]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"--grid names {key} twice: give all its values in one key=v1,v2,...")
    return axes


def combinations(axes: list[Axis]) -> list[dict[str, str]]:
    """Every combination of axis values, the last axis varying fastest."""
    return [dict(zip([a.key for a in axes], combo, strict=True))
            for combo in itertools.product(*(a.values for a in axes))]


# ---------------------------------------------------------------------------------------------- planning

def plan_trials(config: str | None, overrides: list[str], axes: list[Axis], out: Path,
                launcher: list[str]) -> list[Trial]:
    """The trials, each config validated with load_config first: one bad value stops the sweep before any run."""
    for item in overrides:
        if item.partition("=")[0].strip() in RESERVED_KEYS:
            raise UserError(f"override '{item}': run.dir is set per trial by the sweep: choose the folder with --out")
    combos = combinations(axes)
    width = max(3, len(str(len(combos))))
    base = [sys.executable, "-m", "hvdtrain", "train", *(["--config", config] if config else []), *overrides]
    trials = []
    for i, values in enumerate(combos, start=1):
        name = f"trial-{i:0{width}d}"
        grid_words = [f"{k}={v}" for k, v in values.items()]
        run_dir = out / name
        trial_words = [*grid_words, f"run.dir={run_dir}", "run.overwrite=true"]
        try:
            load_config(config, [*overrides, *trial_words])
        except UserError as exc:
            raise UserError(f"{name} ({' '.join(grid_words)}): {exc}") from None
        trials.append(Trial(i, name, values, [*launcher, *base, *trial_words], run_dir))
    return trials


def launcher_words(launcher: str | None) -> list[str]:
    """The launcher prefix as words, its program checked on PATH."""
    if not launcher:
        return []
    try:
        words = shlex.split(launcher)
    except ValueError as exc:
        raise UserError(f"--launcher '{launcher}': {exc}: fix the quoting") from None
    if not words:
        return []
    if shutil.which(words[0]) is None:
        raise UserError(f"--launcher program '{words[0]}' not found: install it or put it on PATH")
    return words


def prepare_out(out: Path) -> None:
    """Creates the sweep folder; one that already holds files is refused (trials would overwrite them)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out '{out}' already exists and is not an empty folder: choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out '{out}' cannot be created ({exc.strerror}): choose a writable folder") from None


# ---------------------------------------------------------------------------------------------- running

def run_trial(trial: Trial, metric: str, timeout: float | None, lower: bool | None = None) -> None:
    """Runs the trial's command, output to OUT/trial-NNN.log, and stores its results in `trial.result`."""
    log_path = trial.run_dir.parent / f"{trial.name}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with log_path.open("w") as log:
        log.write(f"# {shlex.join(trial.command)}\n")
        log.flush()
        _STOPS.hold()  # a stop while the trial starts waits until its process is known
        try:
            proc = subprocess.Popen(trial.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)  # own process group: a timeout kills it all
        except OSError as exc:
            trial.result = {"status": "failed", "wall_time_s": 0.0, "exit_code": "",
                            "error": f"cannot start {trial.command[0]}: {exc.strerror}"}
            _STOPS.release()
            return
        try:
            _STOPS.release()  # in here: a stop held until now ends the trial below
            code: int | None = proc.wait(timeout=timeout)
            error = ""
        except subprocess.TimeoutExpired:
            _stop(proc)
            code, error = None, f"timed out after {timeout:g}s"
        except BaseException:
            _stop(proc)
            raise
    wall = time.perf_counter() - start
    trial.result = {"wall_time_s": round(wall, 2), "exit_code": "" if code is None else code}
    summary = _read_json(trial.run_dir / "summary.json")
    if code == 0 and summary is not None:
        trial.result["status"] = "ok"
        trial.result.update(read_metric(trial.run_dir, summary, metric, lower))
    else:
        trial.result.update(status="failed", error=error or last_error(log_path, code))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Ends a trial's whole process group (launcher, mpirun, ranks): SIGTERM, then SIGKILL to what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.1)
        if not _group_alive(proc):
            break
    proc.wait()


def _group_alive(proc: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the trial's group is left (the launcher itself is reaped here)."""
    proc.poll()
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def last_error(log_path: Path, code: int | None) -> str:
    """The trial's `hvdtrain: error:` line, else its log's last line."""
    lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "hvdtrain: error:" in line:
            return line[line.index("hvdtrain: error:"):]
    if code == 0:
        return "exited 0 without writing summary.json"
    return lines[-1] if len(lines) > 1 else f"exited {code} with no output"


def read_metric(run_dir: Path, summary: dict[str, Any], metric: str, lower: bool | None = None) -> dict[str, Any]:
    """The metric's best value over the run's epochs (metrics.jsonl), that epoch, and the final values. `lower`:
    whether lower is better (None: as the built-in metric of that name, or the loss and times, say)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []
    if records and metric not in records[-1]:
        names = ", ".join(k for k, v in records[-1].items() if isinstance(v, (int, float)) and k != "epoch")
        raise UserError(f"--metric {metric} is not in {path} (it has {names}): pass one of them to --metric")
    scored = [r for r in records if isinstance(r.get(metric), (int, float))]
    minimise = lower_is_better(metric) if lower is None else lower
    best = (min if minimise else max)(scored, key=lambda r: r[metric]) if scored else {}
    final = summary.get("final", {})
    return {metric: best.get(metric, ""), "best_epoch": best.get("epoch", ""),
            f"final_{metric}": "" if final.get(metric) is None else final[metric],
            "epochs": summary.get("epochs", ""), "world_size": summary.get("world_size", ""),
            "train_time_s": round(summary["wall_time_s"], 2) if "wall_time_s" in summary else ""}


# ---------------------------------------------------------------------------------------------- reporting

def columns(axes: list[Axis], metric: str) -> list[str]:
    """sweep.csv's header."""
    return ["trial", "status", "rank", *(a.key for a in axes), metric, "best_epoch", f"final_{metric}", "epochs",
            "world_size", "train_time_s", "wall_time_s", "exit_code", "error", "run_dir"]


def ranked(trials: list[Trial], metric: str, lower: bool | None = None) -> list[Trial]:
    """Trials best first: successful ones by the metric, then those without a value, failed ones last."""
    sign = 1 if (lower_is_better(metric) if lower is None else lower) else -1

    def key(t: Trial) -> tuple[int, float, int]:
        value = t.result.get(metric)
        if t.result.get("status") != "ok":
            return (2, 0.0, t.index)
        if not isinstance(value, (int, float)):
            return (1, 0.0, t.index)
        return (0, sign * value, t.index)
    return sorted((t for t in trials if t.result), key=key)


def write_csv(path: Path, trials: list[Trial], axes: list[Axis], metric: str) -> None:
    """sweep.csv, one row per trial run so far in trial order, written atomically."""
    header = columns(axes, metric)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for t in trials:
        if t.result:
            writer.writerow({"trial": t.name, **t.values, **t.result, "run_dir": str(t.run_dir)})
    write_atomic(path, buf.getvalue())


def format_table(trials: list[Trial], axes: list[Axis], metric: str, lower: bool | None = None) -> str:
    """The trials best first as an aligned text table."""
    header = ["rank", "trial", "status", *(a.key for a in axes), metric, "epochs", "wall_time_s"]
    rows = [[str(t.result.get("rank", "")), t.name, t.result["status"], *t.values.values(),
             _fmt(t.result.get(metric, "")), str(t.result.get("epochs", "")), _fmt(t.result["wall_time_s"], 1)]
            for t in ranked(trials, metric, lower)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)).rstrip()
                     for r in [header, *rows])


def _fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------- the command

def default_out() -> Path:
    return Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")


def run_sweep(config: str | None, overrides: list[str], grid: list[str], *, metric: str = "val_accuracy",
              launcher: str | None = None, out: Path | None = None, dry_run: bool = False,
              timeout: float | None = None) -> int:
    """Validates every trial, runs them one after another, writes sweep.csv and best.yaml, prints the table."""
    axes = parse_grid(grid)
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout {timeout:g} is not a positive number of seconds: e.g. --timeout 3600")
    out = (out or default_out()).absolute()
    trials = plan_trials(config, overrides, axes, out, launcher_words(launcher))
    if dry_run:
        for t in trials:
            print(shlex.join(t.command))
        print(f"{len(trials)} trials (dry run: nothing run)")
        return 0
    # The direction as the run's config declares it (a user metric's own `lower_is_better`, imported here).
    base = load_config(config, overrides)
    lower = base.lower_is_better(metric)
    prepare_out(out)
    parent = SweepParent(base, out)  # tracking.mlflow_uri: one parent run, the trials nested under it
    parent.open(len(trials))
    failed = True
    try:
        with _STOPS.installed():
            code = _run_all(trials, axes, metric, out, timeout, lower)
        failed = False
        return code
    finally:
        best = [t for t in trials if t.result and t.result.get("rank") == 1]
        parent.close({metric: float(best[0].result[metric])} if best else {}, failed)


def _run_all(trials: list[Trial], axes: list[Axis], metric: str, out: Path, timeout: float | None,
             lower: bool) -> int:
    csv_path = out / "sweep.csv"
    goal = "min" if lower else "max"
    print(f"sweep: {len(trials)} trials in {out}, ranked by {metric} ({goal})", flush=True)
    for t in trials:
        shown = " ".join(f"{k}={v}" for k, v in t.values.items())
        print(f"[{t.index}/{len(trials)}] {t.name} {shown} ...", end=" ", flush=True)
        try:
            run_trial(t, metric, timeout, lower)
        except KeyboardInterrupt:
            done = sum(1 for x in trials if x.result)
            print(f"\nsweep stopped during {t.name}: {done} finished trials in {csv_path}", file=sys.stderr)
            raise
        finally:
            write_csv(csv_path, trials, axes, metric)  # a killed sweep leaves the rows so far
        r = t.result
        outcome = f"ok {metric}={_fmt(r[metric])}" if r["status"] == "ok" else f"failed: {r['error']}"
        print(f"{outcome} ({r['wall_time_s']:.1f}s)", flush=True)
    order = ranked(trials, metric, lower)
    for rank, t in enumerate(order, start=1):
        if t.result["status"] == "ok" and t.result.get(metric, "") != "":
            t.result["rank"] = rank
    write_csv(csv_path, trials, axes, metric)
    print(format_table(trials, axes, metric, lower))
    print(f"wrote {csv_path}")
    best = order[0] if order and order[0].result.get("rank") == 1 else None
    if best is not None:
        best_path = out / "best.yaml"
        write_atomic(best_path, f"# best of {len(trials)} trials by {metric} ({goal}): {best.name}, "
                                f"{metric}={best.result[metric]}\n" + (best.run_dir / "config.yaml").read_text())
        print(f"best: {best.name} {metric}={_fmt(best.result[metric])}; config in {best_path}")
    if not any(t.result["status"] == "ok" for t in trials):
        raise SweepFailed(f"no trial succeeded ({len(trials)} failed): read their logs, {out}/trial-*.log")
    return 0


class _Stops:
    """SIGTERM and SIGINT stop the sweep as Ctrl-C does (KeyboardInterrupt), the running trial with it. While a trial
    starts, a stop is held (`hold`) and raised once its process is known (`release`): raised between the fork and
    `proc`, it left the trial running after the sweep had gone (seen under load)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self.holding:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[None]:
        """The handlers for the sweep's duration (left alone outside the main thread, where they cannot be set)."""
        try:
            previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        except ValueError:
            previous = {}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """Stops holding; raises the stop that came meanwhile, if one did."""
        self.holding = False
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


_STOPS = _Stops()
