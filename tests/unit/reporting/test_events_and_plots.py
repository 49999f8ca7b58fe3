"""TensorBoard event files written without any framework, read back by TensorFlow's reader in another
process; and the `plot` command on run directories (a real PNG; one-line errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from hvdtrain.reporting.tensorboard import EventWriter, crc32c


def read_events(directory: Path) -> list[dict]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "read_events.py"), str(directory)],
                          capture_output=True, text=True, timeout=300, check=True)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_crc32c_matches_the_standard_check_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, 32 bytes of zeros


def test_scalars_read_back_with_tensorflows_reader(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "tb", enabled=True) as writer:
        writer.scalars(5, {"epoch/loss": 0.25, "epoch/lr": 0.1, "skipped": None})
        writer.scalars(2 ** 40, {"step/loss": -1.5e-3})
    records = read_events(tmp_path / "tb")
    assert records[0] == {"files": 1} and records[1] == {"file_version": "brain.Event:2"}
    values = {(r["step"], r["tag"]): r["value"] for r in records if "tag" in r}
    assert set(values) == {(5, "epoch/loss"), (5, "epoch/lr"), (2 ** 40, "step/loss")}
    # Stored as float32: relative 1e-7.
    assert values[(5, "epoch/loss")] == 0.25
    assert values[(5, "epoch/lr")] == pytest.approx(0.1, rel=1e-7)
    assert values[(2 ** 40, "step/loss")] == pytest.approx(-1.5e-3, rel=1e-7)


def test_a_disabled_writer_creates_nothing(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path / "tb", enabled=False)
    writer.scalars(1, {"a": 1.0})
    writer.close()
    assert not (tmp_path / "tb").exists()


def _fake_run(directory: Path, backend: str, speed: float) -> Path:
    directory.mkdir()
    epochs = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.2 / e, "train_accuracy": 0.3 * e,
               "val_accuracy": 0.28 * e, "lr": 0.05, "samples_per_s": speed * e} for e in (1, 2, 3)]
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    (directory / "steps.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 - s / 10, "lr": 0.01 * s})
                                                   + "\n" for s in range(1, 16)))
    (directory / "summary.json").write_text(json.dumps({"backend": backend, "world_size": 2}))
    return directory


def run_plot(*args: str) -> subprocess.CompletedProcess:
    # The command must not need a framework: report whether torch or tensorflow got imported.
    code = ("import sys, runpy; sys.argv = ['hvdtrain', 'plot', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('hvdtrain', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('frameworks:', sorted(m for m in ('torch', 'tensorflow') if m in sys.modules))\n"
            "sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_plot_overlays_runs_in_a_png(tmp_path: Path) -> None:
    a, b = _fake_run(tmp_path / "a", "torch", 900.0), _fake_run(tmp_path / "b", "tensorflow", 600.0)
    out = tmp_path / "both.png"
    proc = run_plot(str(a), str(b), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "frameworks: []" in proc.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600
    assert out.stat().st_size > 20_000  # four panels of curves, not an empty canvas


@pytest.mark.parametrize("setup,words", [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty").mkdir() or d / "empty", "has no metrics.jsonl"),
    (lambda d: _fake_run(d / "bad", "torch", 1.0) and ((d / "bad" / "metrics.jsonl").open("a").write("{oops\n")
                                                        and d / "bad"), "line 4 is not valid JSON"),
    (lambda d: _fake_run(d / "latin", "torch", 1.0) and ((d / "latin" / "metrics.jsonl").open("ab").write(b"\xff\n")
                                                          and d / "latin"), "line 4 is not valid JSON"),
    (lambda d: _fake_run(d / "nostep", "torch", 1.0) and ((d / "nostep" / "steps.jsonl").write_text('{"loss": 1}\n')
                                                           and d / "nostep"), "line 1 is not a record with step"),
    (lambda d: _fake_run(d / "fresh", "torch", 1.0) and ((d / "fresh" / "metrics.jsonl").write_text("") == 0
                                                          and d / "fresh"), "holds no epoch yet"),
])
def test_plot_errors_are_one_line(tmp_path: Path, setup, words: str) -> None:
    proc = run_plot(str(setup(tmp_path)), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and words in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_refuses_an_output_folder_that_does_not_exist_or_is_a_folder(tmp_path: Path) -> None:
    run = str(_fake_run(tmp_path / "a", "torch", 1.0))
    proc = run_plot(run, "--out", str(tmp_path / "no" / "x.png"))
    assert proc.returncode == 2 and "--out directory" in proc.stderr
    proc = run_plot(run, "--out", str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in proc.stderr and "Traceback" not in proc.stderr


def test_plot_shows_the_runs_first_metric() -> None:
    from hvdtrain.commands.plot import first_metric

    assert first_metric([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "lr": 0.1}]) == "accuracy"
    assert first_metric([{"epoch": 1, "train_loss": 1.0, "train_mae": 3.0, "train_r2": 0.2}]) == "mae"
    assert first_metric([{"epoch": 1, "train_loss": 1.0, "lr": 0.1}]) == "accuracy"  # no metric recorded
