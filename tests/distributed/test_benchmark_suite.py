"""`python -m benchmarks --quick`: every section of the suite runs on tiny sizes (real horovodrun, mpirun,
torchrun and worker processes) and writes a well-formed report. Nothing here asserts a speed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from conftest import REPO, together

pytestmark = pytest.mark.distributed

SECTIONS = ("overhead", "scaling", "allreduce", "datawait", "augment", "policy", "backends")
# Two `--only` runs at once, about equal in length (each keeps about 1.6 of the 2 cores busy alone); `backends`
# stays with `policy`, whose runs it reuses under --quick.
GROUPS = ("overhead,allreduce,augment", "scaling,datawait,policy,backends")
NUMBER = r"[\d,]+(\.\d+)?"


def _table(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]  # after head and rule


def test_quick_suite_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def quick(group: str, report: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", group, "--report",
                               str(report)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
                              stdin=subprocess.DEVNULL)

    reports = [tmp_path / f"bench-{i}.md" for i in range(len(GROUPS))]
    for proc in together(*(partial(quick, group, report) for group, report in zip(GROUPS, reports, strict=True))):
        assert proc.returncode == 0, proc.stderr[-4000:]
    text = "\n".join(report.read_text() for report in reports)
    sections = {}
    for name in SECTIONS:
        match = re.search(rf"<!-- bench:{name} -->\n(.*?)\n<!-- /bench:{name} -->", text, re.S)
        assert match, f"section {name} missing"
        sections[name] = match.group(1)
        assert f"`python -m benchmarks.{name} " in sections[name] and "--quick" in sections[name]
        assert re.search(r"\d+ cores \(.*\), Python 3\.\d+", sections[name]), "machine line missing"

    overhead = _table(sections["overhead"])
    assert [(r[0], r[1]) for r in overhead] == [("torch", "2"), ("tensorflow", "2"), ("torch", "2")]  # --quick: np=2
    for row in overhead:  # baseline ms/step, hvdtrain ms/step, ratio = hvdtrain / baseline
        baseline, ours, ratio = (float(v) for v in row[3:6])
        assert baseline > 0 and ours > 0 and ratio == pytest.approx(ours / baseline, rel=0.02, abs=0.002)
    assert re.search(r"Target \(hvdtrain / hand-written <= 1\.03 on both backends\): (met|not met)",
                     sections["overhead"])

    scaling = _table(sections["scaling"])
    assert [r[0] for r in scaling] == ["torch", "tensorflow"]
    for row in scaling:
        one, two, efficiency, pair, bound, kept = (float(v.replace(",", "")) for v in row[2:8])
        assert efficiency == pytest.approx(two / (2 * one), rel=0.01, abs=0.002)
        assert bound == pytest.approx(pair / (2 * one), rel=0.01, abs=0.002)
        assert kept == pytest.approx(two / pair, rel=0.01, abs=0.002)

    allreduce = _table(sections["allreduce"])
    assert [r[0] for r in allreduce] == ["4 KiB", "16 KiB", "64 KiB"]
    for row in allreduce:
        gloo, mpi, ideal, copy = (float(v) for v in row[1:5])
        assert min(ideal, copy) > 0 and min(gloo, mpi) >= 0

    datawait = _table(sections["datawait"])
    assert [(r[0].split(" (")[0], r[1]) for r in datawait] == [  # --quick: each config on one backend in turn
        ("digits", "torch"), ("synthetic 32x32x3, cnn", "tensorflow"), ("digits + augmentation", "torch")]
    for row in datawait:
        shares = [float(v.rstrip("%")) for v in row[3:7]]
        assert sum(shares) == pytest.approx(100.0, abs=0.3)

    augment = _table(sections["augment"])
    assert [r[0] for r in augment][:3] == ["keras", "kornia", "hvdtrain-native"]
    assert augment[0][2] == "1.0x"  # Keras against itself
    for name in ("policy", "backends"):
        assert len(_table(sections[name])) >= 2
        assert all(re.fullmatch(NUMBER, row[-3 if name == "policy" else 1]) for row in _table(sections[name]))


def test_quick_needs_a_report_file() -> None:
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "--quick needs --report FILE" in proc.stderr
