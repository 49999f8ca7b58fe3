"""`hvdtrain convert`'s weight mapping: every built-in architecture, with non-trivial BatchNorm statistics, moved
torch -> Keras and Keras -> torch through the portable arrays gives the same logits (one framework per
process: portable_models.py); and the framework-neutral command refuses what it cannot convert in one line
(tests/distributed/test_convert.py converts real runs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from hvdtrain.config import load_config, to_yaml
from hvdtrain.errors import UserError
from hvdtrain.lifecycle import convert
from hvdtrain.lifecycle import convert_worker as worker
from hvdtrain.lifecycle.convert import ConvertResult, convert_run

SCRIPT = Path(__file__).with_name("portable_models.py")
FRAMEWORKS = ("torch", "tensorflow")
ARCHITECTURES = ("mlp", "mlp-rgb", "cnn", "cnn-digits", "mobilenet", "resnet", "resnet50")
BATCHNORMS = {"mobilenet": 5, "resnet": 9, "resnet50": 53}  # the rest have none
TORCH_TO_KERAS = {"weight": ("kernel", "gamma"), "bias": ("bias", "beta"), "running_mean": ("moving_mean",),
                  "running_var": ("moving_variance",)}


def wait_side_by_side(sides: dict[str, subprocess.Popen], timeout: float) -> list[str]:
    """Waits until every process has exited, one has failed, or `timeout` s have passed (a side that fails or
    hangs leaves the other waiting for it); ends the rest and returns the names of those that did not succeed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        codes = [proc.poll() for proc in sides.values()]
        if None not in codes or any(code not in (None, 0) for code in codes):
            break
        time.sleep(0.05)
    for proc in sides.values():
        proc.kill()  # nothing for those that have exited
        proc.wait()
    return [name for name, proc in sides.items() if proc.returncode != 0]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """torch and Keras each write their arrays, then each loads the other's: the two processes run side by side
    (importing the frameworks is most of their time) and wait for each other in between (portable_models.py)."""
    directory = tmp_path_factory.mktemp("portable")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with ExitStack() as stack:
        sides = {framework: subprocess.Popen(
                     [sys.executable, str(SCRIPT), framework, str(directory)], cwd=REPO, env=env,
                     stdout=stack.enter_context((directory / f"{framework}.stdout").open("w")),
                     stderr=stack.enter_context((directory / f"{framework}.stderr").open("w")))
                 for framework in FRAMEWORKS}
        failed = wait_side_by_side(sides, timeout=300)
    assert not failed, "\n".join(f"{framework} side exited {sides[framework].returncode}:\n"
                                 f"{(directory / f'{framework}.stderr').read_text()[-3000:]}" for framework in failed)
    return {framework: json.loads((directory / f"{framework}.stdout").read_text().strip().splitlines()[-1])
            for framework in FRAMEWORKS}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_logits_agree_both_ways(reports: dict[str, dict], architecture: str) -> None:
    for framework in ("tensorflow", "torch"):
        entry = reports[framework][architecture]
        print(f"{architecture} -> {framework}: {entry['tensors']} tensors, max |logit diff| "
              f"{entry['max_abs_diff']:.1e} (logits up to {entry['logit_scale']:.2f})")
        # Measured: 1.5e-8 .. 3.9e-7 (float32 round-off of two convolution libraries); hvdtrain convert's limit.
        assert entry["max_abs_diff"] <= 1e-4, (architecture, framework)
        assert entry["max_abs_diff"] <= 1e-5 * entry["logit_scale"], "a mix-up would differ by about the logits"
        assert entry["loaded"] == entry["tensors"]
        assert entry["round_trip"], "exporting what was loaded gives back the same arrays, bit for bit"
    assert reports["torch"][architecture]["tensors"] == reports["tensorflow"][architecture]["tensors"]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_weight_and_statistic_is_mapped(reports: dict[str, dict], architecture: str) -> None:
    torch_entry, tf_entry = reports["torch"][architecture], reports["tensorflow"][architecture]
    batchnorms = BATCHNORMS.get(architecture, 0)
    # torch's whole state dict but num_batches_tracked (one per BatchNorm, set on import) ...
    assert torch_entry["state"] == torch_entry["tensors"] + batchnorms
    assert torch_entry["batches_tracked"] == ([7] if batchnorms else [])
    # ... pairs with Keras' variables kind by kind, in the same order.
    for torch_name, keras_path in zip(torch_entry["names"], tf_entry["names"], strict=True):
        assert keras_path.rpartition("/")[2] in TORCH_TO_KERAS[torch_name.rpartition(".")[2]], \
            (torch_name, keras_path)
    assert sum(name.endswith("running_var") for name in torch_entry["names"]) == batchnorms


def test_resnet50_pairs_torch_module_paths(reports: dict[str, dict]) -> None:
    """Keras' ResNet-50 names its convs and BatchNorms by torch's module paths: an order check independent of
    the creation order the mapping uses (the residual shortcuts are where Keras' graph order differs)."""
    pairs = zip(reports["torch"]["resnet50"]["names"], reports["tensorflow"]["resnet50"]["names"], strict=True)
    named = [(t.rpartition(".")[0], k.split("/")[-2]) for t, k in pairs
             if any(part in t for part in ("conv", "bn", "downsample"))]
    assert len(named) == 53 + 4 * 53  # every conv's kernel, every BatchNorm's four tensors
    assert all(module == layer for module, layer in named), [p for p in named if p[0] != p[1]][:3]


def test_a_different_architecture_is_refused_unchanged(reports: dict[str, dict]) -> None:
    torch_errors, tf_errors = reports["torch"]["errors"], reports["tensorflow"]["errors"]
    assert torch_errors == ["model.name=cnn: the source holds 4 tensors, this torch model 8: they are not the same "
                            "architecture",
                            "model.name=cnn: tensor 2 (3.weight) is [3, 3, 8, 16] in Keras layout here but "
                            "[3, 3, 8, 32] in the source: not the same architecture"]
    assert reports["torch"]["unchanged_after_error"]
    assert tf_errors[0] == ("model.name=mobilenet: the source holds 8 tensors, this Keras model 29: they are not "
                            "the same architecture")
    assert "has no creation order: build the model with tf_backend.models.build_model" in tf_errors[1]


# --- the command's refusals (no framework needed) ------------------------------------------------------------
def fake_run(directory: Path, *overrides: str, backend: str = "torch") -> Path:
    """A directory that opens as a finished run (the model file is never read before the refusals)."""
    directory.mkdir(parents=True)
    cfg = load_config(None, [f"backend={backend}", "data.name=digits", *overrides])
    (directory / "config.yaml").write_text(to_yaml(cfg))
    (directory / "summary.json").write_text(json.dumps({"backend": backend, "class_names": list("0123456789"),
                                                        "image_shape": [8, 8, 1], "steps": 3}))
    (directory / ("model.pt" if backend == "torch" else "model.keras")).write_bytes(b"")
    return directory


def refusal(run_dir: Path, to: str, out: Path) -> str:
    with pytest.raises(UserError) as caught:
        convert_run(str(run_dir), to, str(out))
    message = str(caught.value)
    assert "\n" not in message and message.startswith("convert: ")
    return message


def test_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run(tmp_path / "run")
    out = tmp_path / "new"
    user = fake_run(tmp_path / "user", "model.name=my_pkg.models:build")
    assert "your own model (model.name=my_pkg.models:build): convert maps only the built-in architectures" in \
        refusal(user, "tensorflow", out)
    assert "is already a torch run: pass --to tensorflow" in refusal(run, "torch", out)
    assert "--to jax is not a backend" in refusal(run, "jax", out)
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "config.yaml").write_text(yaml.safe_dump({"backend": "torch"}))
    assert "has no summary.json: the run did not finish" in refusal(tmp_path / "unfinished", "tensorflow", out)
    out.mkdir()
    (out / "file").write_text("x")
    assert f"--out '{out}' already exists and is not empty: pass a new (or empty) directory" in \
        refusal(run, "tensorflow", out)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert "runs as one process" in refusal(run, "tensorflow", tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "run", "unfinished", "user"]  # nothing written


def test_result_line() -> None:
    result = ConvertResult(Path("runs/a"), "torch", Path("runs/a-tf"), "tensorflow", 25, 3.1e-6, 359, "validation",
                           ())
    assert result.line() == ("converted runs/a (torch) -> runs/a-tf (tensorflow): 25 tensors, max |logit diff| "
                             "3.1e-06 on 359 validation images")
    dropped = ConvertResult(Path("a"), "torch", Path("b"), "tensorflow", 4, 0.0, 8, "validation", ("train.freeze",))
    assert dropped.line().endswith("; dropped train.freeze (they name torch parameters)")


def test_the_command_imports_no_framework() -> None:
    code = ("import sys, hvdtrain.lifecycle.convert; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# --- the command's assembly and clean-up, with the framework steps stubbed --------------------------------
def stub_workers(monkeypatch: pytest.MonkeyPatch, logit_diff: float, logit: float = 0.0) -> list[list[str]]:
    """Replaces the two worker processes: export 'computes' logits of `logit`, import ones `logit_diff` off and
    writes a model file; returns the argument lists they were called with."""
    calls: list[list[str]] = []

    def run_worker(args: list[str], scratch: Path, framework: str) -> dict:
        calls.append(args)
        images = np.load(scratch / worker.IMAGES)
        if args[0] == "export":
            np.save(scratch / worker.SOURCE_LOGITS, np.full((len(images), 10), logit, np.float32))
            return {"framework_version": "torch 0", "tensors": 4}
        np.save(scratch / worker.TARGET_LOGITS, np.full((len(images), 10), logit + logit_diff, np.float32))
        (Path(args[2]) / "model.keras").write_bytes(b"model")
        return {"framework_version": "tensorflow 0", "tensors": 4}

    monkeypatch.setattr(convert, "_run_worker", run_worker)
    return calls


def test_a_converted_run_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = fake_run(tmp_path / "run", "train.freeze=['0.*']", "policy.accumulation_steps=2")
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "accumulation_steps": 2}))
    calls = stub_workers(monkeypatch, 2e-5)
    (tmp_path / "new").mkdir()  # an empty --out is taken
    result = convert_run(str(run), "tensorflow", str(tmp_path / "new"))
    assert result.line() == (f"converted {run} (torch) -> {tmp_path / 'new'} (tensorflow): 4 tensors, max |logit diff| "
                             "2.0e-05 on 359 validation images; dropped train.freeze (they name torch parameters)")
    assert calls[1][-1] == "6"  # num_batches_tracked: 3 steps of 2 micro-batches
    new = tmp_path / "new"
    assert sorted(p.name for p in new.iterdir()) == ["config.yaml", "metrics.jsonl", "model.keras", "summary.json"]
    cfg = load_config(new / "config.yaml")
    assert (cfg.backend, cfg.run.dir, cfg.train.freeze) == ("tensorflow", str(new), ())
    assert cfg.policy.accumulation_steps == 2 and cfg.data.name == "digits"
    summary = json.loads((new / "summary.json").read_text())
    assert summary["backend"] == "tensorflow" and summary["framework_version"] == "tensorflow 0"
    assert summary["converted_from"] == {"run_dir": str(run.resolve()), "backend": "torch", "framework_version": None,
                                         "max_abs_logit_diff": pytest.approx(2e-5), "logit_diff_limit": 1e-4,
                                         "images": 359, "tensors": 4}
    assert (new / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
    assert oct(new.stat().st_mode & 0o777) == "0o755"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "run"]


@pytest.mark.parametrize(("logit", "diff", "limit"), [(0.0, 2e-4, "1.0e-04"), (-300.0, 0.04, "3.0e-02")])
def test_logits_over_the_limit_leave_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, logit: float,
                                             diff: float, limit: str) -> None:
    run = fake_run(tmp_path / "run")
    stub_workers(monkeypatch, diff, logit)
    assert refusal(run, "tensorflow", tmp_path / "new") == (
        f"convert: the converted tensorflow model's logits differ from the torch run's by up to {diff:.1e} on 359 "
        f"validation images (limit {limit}): nothing was written; please report this as a bug with the run's "
        "config.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # neither --out nor the work folder next to it


def test_the_limit_is_relative_to_large_logits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An immature ResNet-50's logits in the hundreds differ by 4e-4 from float32 round-off alone (measured:
    6.7e-7 of the largest logit, 548): that is a good conversion."""
    stub_workers(monkeypatch, 0.02, 300.0)
    result = convert_run(str(fake_run(tmp_path / "run")), "tensorflow", str(tmp_path / "new"))
    assert result.max_abs_logit_diff == pytest.approx(0.02, rel=1e-3)
    assert "max |logit diff| 2.0e-02 (limit 3.0e-02: large logits) on 359 validation images" in result.line()
    assert json.loads((tmp_path / "new" / "summary.json").read_text())["converted_from"]["logit_diff_limit"] == \
        pytest.approx(0.03)


def test_a_diverged_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub_workers(monkeypatch, 0.0, float("nan"))
    assert "model gives non-finite logits (NaN or inf) on its validation images" in \
        refusal(fake_run(tmp_path / "run"), "tensorflow", tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
