"""Rank 0's progress display: every piece of output is one write of whole lines, step lines come at a steady
pace in time (a fake clock drives it), the bar stays on terminals outside launchers; and under a real
horovodrun no rank-0 line is split into tagged fragments."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO, run_hvdtrain

from hvdtrain.distributed.environment import _LAUNCHER_VARS
from hvdtrain.reporting.progress import Progress


class FakeStream:
    """Records every write call separately."""

    def __init__(self, tty: bool = False) -> None:
        self.writes: list[str] = []
        self.flushes = 0
        self.tty = tty

    def write(self, data: str) -> int:
        self.writes.append(data)
        return len(data)

    def flush(self) -> None:
        self.flushes += 1

    def isatty(self) -> bool:
        return self.tty


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RECORD = {"train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.6, "val_accuracy": 0.75, "lr": 0.05,
          "epoch_time_s": 3.0, "samples_per_s": 12345.0}


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in _LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)


def lines_progress(clock: FakeClock, stream: FakeStream) -> Progress:
    return Progress("lines", enabled=True, stream=stream, clock=clock)


def run_epoch(progress: Progress, clock: FakeClock, steps: int, step_s: float, epoch: int = 0,
              epochs: int = 1) -> None:
    progress.start_epoch(epoch, epochs, steps)
    for step in range(1, steps + 1):
        clock.now += step_s
        progress.update(step, 0.25, 1000.0)
    progress.end_epoch(RECORD)


def assert_whole_lines(writes: list[str]) -> None:
    for data in writes:
        assert data.endswith("\n") and "\r" not in data, repr(data)
        assert "\n" not in data[:-1], repr(data)  # one line per write here


def test_print_writes_each_line_whole_in_one_write_and_flushes_it() -> None:
    stream = FakeStream()
    progress = Progress("lines", enabled=True, stream=stream)
    progress.print("hello")
    # Not all in one write either: a pseudo-terminal passes a write on in 2048-byte pieces.
    progress.print("resolved config:\n  a: 1\n  b: 2")
    assert stream.writes == ["hello\n", "resolved config:\n", "  a: 1\n", "  b: 2\n"]
    assert stream.flushes == 4


def test_a_long_epoch_gets_a_step_line_every_interval_plus_its_closing_line() -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = lines_progress(clock, stream)
    run_epoch(progress, clock, steps=100, step_s=0.5)  # a 50 s epoch
    assert_whole_lines(stream.writes)
    steps = [int(re.search(r"step (\d+)/100", w).group(1)) for w in stream.writes[:-1]]
    assert steps == [10, 20, 30, 40, 50, 60, 70, 80, 90]  # every 5 s; step 100's line is the closing line
    assert stream.writes[-1] == ("epoch 1/1 done: loss 0.5000 acc 0.8000 val_loss 0.6000 val_acc 0.7500 lr 0.05 "
                                 "3.00s 12,345 samples/s\n")
    assert stream.writes[0] == "epoch 1/1 step 10/100 loss 0.2500 1,000 samples/s\n"


@pytest.mark.parametrize("steps", [22, 250, 10_000])
def test_pace_is_in_time_whatever_the_step_count(steps: int) -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = lines_progress(clock, stream)
    step_s = 60.0 / steps
    run_epoch(progress, clock, steps=steps, step_s=step_s)  # a 60 s epoch in any number of steps
    assert_whole_lines(stream.writes)
    times = [int(re.search(r" step (\d+)/", w).group(1)) * step_s for w in stream.writes if " step " in w]
    assert 9 <= len(times) <= 11
    assert all(later - earlier >= 5.0 - 1e-9 for earlier, later in zip([0.0, *times], times, strict=False))
    assert 60.0 - times[-1] < 5.0 + step_s  # no long silence before the closing line


def test_an_epoch_of_few_slow_steps_gets_a_line_per_step() -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = lines_progress(clock, stream)
    run_epoch(progress, clock, steps=4, step_s=15.0)
    assert [w.split(" loss")[0] for w in stream.writes] == [
        "epoch 1/1 step 1/4", "epoch 1/1 step 2/4", "epoch 1/1 step 3/4", "epoch 1/1 done:"]


def test_short_epochs_print_only_their_closing_lines() -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = lines_progress(clock, stream)
    for epoch in range(12):  # 12 epochs of 22 steps in 0.3 s each: the digits example
        run_epoch(progress, clock, steps=22, step_s=0.3 / 22, epoch=epoch, epochs=12)
    assert len(stream.writes) == 12
    assert all(" done: " in w for w in stream.writes)
    assert_whole_lines(stream.writes)


def test_any_line_restarts_the_interval() -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = lines_progress(clock, stream)
    progress.start_epoch(0, 1, 100)
    clock.now += 4.0
    progress.print("checkpoint written")
    clock.now += 4.0
    progress.update(1, 0.1, 10.0)  # 8 s into the epoch, but only 4 s after the last line
    assert stream.writes == ["checkpoint written\n"]
    clock.now += 1.0
    progress.update(2, 0.1, 10.0)
    assert stream.writes[-1] == "epoch 1/1 step 2/100 loss 0.1000 10 samples/s\n"


def test_closing_line_of_an_epoch_without_steps_and_without_validation() -> None:
    stream = FakeStream()
    progress = Progress("lines", enabled=True, stream=stream)
    progress.start_epoch(2, 3, 0)
    progress.end_epoch({**RECORD, "val_loss": None})
    assert stream.writes == ["epoch 3/3 done: loss 0.5000 acc 0.8000 lr 0.05 3.00s 12,345 samples/s\n"]


@pytest.mark.parametrize("mode", ["lines", "bar", "auto"])
def test_other_ranks_write_nothing(mode: str) -> None:
    clock, stream = FakeClock(), FakeStream(tty=True)
    progress = Progress(mode, enabled=False, stream=stream, clock=clock)
    progress.print("x")
    run_epoch(progress, clock, steps=50, step_s=1.0)
    assert stream.writes == [] and progress.mode == "off"


def test_off_writes_nothing() -> None:
    clock, stream = FakeClock(), FakeStream()
    progress = Progress("off", enabled=True, stream=stream, clock=clock)
    progress.print("x")
    run_epoch(progress, clock, steps=50, step_s=1.0)
    assert stream.writes == []


def test_auto_is_a_bar_only_on_a_terminal_outside_launchers(no_launcher: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert Progress("auto", True, stream=FakeStream(tty=True)).mode == "bar"
    assert Progress("auto", True, stream=FakeStream(tty=False)).mode == "lines"
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")  # mpirun hands ranks a pseudo-terminal
    assert Progress("auto", True, stream=FakeStream(tty=True)).mode == "lines"
    assert Progress("bar", True, stream=FakeStream(tty=False)).mode == "bar"  # asked for explicitly


def test_bar_redraws_in_single_writes_at_most_every_tenth_of_a_second_then_closes_in_one() -> None:
    clock, stream = FakeClock(), FakeStream(tty=True)
    progress = Progress("bar", enabled=True, stream=stream, width=10, clock=clock)
    progress.print("header")
    run_epoch(progress, clock, steps=20, step_s=0.0625)  # a redraw every other step, and the last step
    header, *bars, closing = stream.writes
    assert header == "header\n"
    assert all(b.startswith("\r") and "\n" not in b for b in bars)
    assert [re.search(r"(\d+)/20", b).group(1) for b in bars] == [str(s) for s in (1, *range(3, 20, 2), 20)]
    assert bars[-1].startswith("\repoch 1/1 [##########] 20/20 loss 0.2500")
    # The bar's line ends and the closing line follows, in the same write.
    assert closing.startswith("\nepoch 1/1 done: ") and closing.endswith("\n") and closing.count("\n") == 2
    assert stream.flushes == len(stream.writes)


def test_bar_pads_over_a_longer_previous_drawing() -> None:
    clock, stream = FakeClock(), FakeStream(tty=True)
    progress = Progress("bar", enabled=True, stream=stream, width=4, clock=clock)
    progress.start_epoch(0, 1, 10)
    progress.update(1, 0.5, 1_000_000.0)
    clock.now += 1.0
    progress.update(2, 0.5, 1.0)
    first, second = stream.writes
    assert len(second) == len(first) and second.rstrip(" ").endswith("1 samples/s")


def test_a_line_printed_while_a_bar_is_drawn_starts_on_its_own_line() -> None:
    clock, stream = FakeClock(), FakeStream(tty=True)
    progress = Progress("bar", enabled=True, stream=stream, clock=clock)
    progress.start_epoch(0, 1, 10)
    progress.update(1, 0.5, 10.0)
    progress.print("elastic reset: 1 rank(s) now")
    assert stream.writes[-1] == "\nelastic reset: 1 rank(s) now\n"
    progress.print("next")
    assert stream.writes[-1] == "next\n"


@pytest.mark.distributed
def test_rank_zero_lines_arrive_whole_under_horovodrun(tmp_path: Path) -> None:
    """Open MPI tags every separate write of a rank's output: a line written in two pieces shows up as
    `...samples/s[1,0]<stdout>:` and a line holding just the tag. PYTHONUNBUFFERED=1 (set by run_hvdtrain)
    hands each write to the launcher as it is made. The whole config (run.print_config) is the longest burst."""
    proc = run_hvdtrain(["--config", str(REPO / "configs" / "digits.yaml"), "train.epochs=2",
                         f"run.dir={tmp_path / 'run'}", "run.overwrite=true", "run.print_config=true"],
                        launcher="horovodrun", np_=2)
    lines = proc.stdout.splitlines()
    broken = [ln for ln in lines if ln.endswith("<stdout>:") or ln.count("<stdout>:") > 1 or "\r" in ln]
    assert not broken, "\n".join(broken)
    rank0 = [re.sub(r"^\[\d+,0\]<stdout>:", "", ln) for ln in lines if re.match(r"^\[\d+,0\]<stdout>:", ln)]
    assert rank0, proc.stdout[-3000:]  # horovodrun over MPI tags the output; these are rank 0's lines
    assert sum(ln.startswith("epoch 1/2 done: ") for ln in rank0) == 1
    assert sum(ln.startswith("epoch 2/2 done: ") for ln in rank0) == 1
    assert rank0[-1].startswith("finished in ")
    assert any(ln.startswith("policy: ") and ln.endswith("reduce average") for ln in rank0)
    dump = rank0.index("resolved config:")
    assert rank0[dump + 1:dump + 3] == ["  backend: torch", "  task: classification"]  # whole lines, in order
