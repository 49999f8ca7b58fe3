"""How a rank ends on a user error (hvdtrain/distributed/error_exit.py), in one process: the line is written
once, the rank waits at the barrier before Horovod shuts down, and a barrier that no peer joins gives up.
tests/distributed/ checks the same under mpirun and horovodrun (every rank's line in the output)."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from fake_backend import FakeCommunicator  # noqa: E402

from hvdtrain.distributed import error_exit  # noqa: E402
from hvdtrain.errors import ConfigError, JobAborted  # noqa: E402


def test_the_line_comes_before_the_barrier_and_the_barrier_before_shutdown(capsys: pytest.CaptureFixture[str]) -> None:
    comm = FakeCommunicator(size=2)
    comm.init()
    order: list[str] = []
    comm.barrier = lambda: order.append(f"barrier after {capsys.readouterr().err.count('hvdtrain: error:')} line(s)")
    with pytest.raises(ConfigError), error_exit.ending_with_errors_reported(comm):
        raise ConfigError("train.batch_size: 0 is below the minimum 1")
    assert order == ["barrier after 1 line(s)"]
    assert comm.calls[-1] == ("shutdown", None)
    assert capsys.readouterr().err == ""  # written once: the CLI's own announce() adds nothing


def test_an_announced_error_is_written_once(capsys: pytest.CaptureFixture[str]) -> None:
    exc = ConfigError("bad")
    error_exit.announce(exc)
    error_exit.announce(exc)
    assert capsys.readouterr().err == "hvdtrain: error: bad\n"


def test_the_line_and_its_newline_go_out_in_one_write(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ranks share the launcher's stderr: a line written in two pieces let another rank's line in between
    # (seen once in 7 rounds of make test-races: "...samples" + "hvdtrain: error: ..." on one line).
    writes: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            writes.append("<flush>")

    monkeypatch.setattr(sys, "stderr", Stream())
    error_exit.announce(ConfigError("bad"))
    assert writes == ["hvdtrain: error: bad\n", "<flush>"]


def test_a_job_aborted_by_a_dead_peer_does_not_wait() -> None:
    comm = FakeCommunicator(size=2)
    comm.init()
    with pytest.raises(JobAborted), error_exit.ending_with_errors_reported(comm):
        raise JobAborted("a peer died")
    assert ("barrier", None) not in comm.calls and comm.calls[-1] == ("shutdown", None)


def test_no_barrier_once_horovod_is_down() -> None:
    comm = FakeCommunicator(size=2)  # never initialised
    error_exit.wait_for_every_rank(ConfigError("x"), comm)
    assert ("barrier", None) not in comm.calls


@pytest.mark.races
def test_a_barrier_no_peer_joins_gives_up_after_the_timeout() -> None:
    comm = FakeCommunicator(size=2)
    comm.init()
    never = threading.Event()
    comm.barrier = never.wait  # a peer that went on without the error never arrives
    start = time.monotonic()
    error_exit.wait_for_every_rank(ConfigError("x"), comm, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - start < 5
    never.set()


def test_the_framework_named_by_the_input(tmp_path: Path) -> None:
    from hvdtrain.config import named_backend

    config = tmp_path / "c.yaml"
    config.write_text("backend: tensorflow\ntrain: {batch_size: 0}\n")
    assert named_backend(config, []) == "tensorflow"
    assert named_backend(config, ["backend=torch"]) == "torch"
    assert named_backend(None, ["train.batch_size=0"]) == "torch"  # the default
    assert named_backend(None, ["backend=jax"]) is None
    assert named_backend(tmp_path / "missing.yaml", []) is None
    config.write_text("{not: yaml")
    assert named_backend(config, []) is None
