"""Every built-in architecture is the same network on both backends: the same variables in the same order, the
same initial distributions, and (with torch's weights copied into Keras) the same outputs, which also pins
the padding of strided convs. One framework per process (tests/scripts/model_parity.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

# Trainable parameters, 10 classes, default head (docs/models.md quotes these); ResNet-50 with 1000 classes is
# torchvision's resnet50, 25,557,032.
EXPECTED_COUNTS = {"mobilenet[8, 8, 1]": 13930, "mobilenet[32, 32, 3]": 14506, "mobilenet-x0.5[32, 32, 3]": 7194,
                   "resnet-8[32, 32, 3]": 87002, "resnet-20[8, 8, 1]": 281146, "resnet-20[32, 32, 3]": 281434,
                   "cnn[8, 8, 1]": 53002, "resnet50[64, 64, 3]": 25_557_032,
                   # nanoGPT's baby GPT (vocabulary 65, context 64; nanoGPT prints 802,944 decayed + 1,152 not)
                   "gpt[64]-v65": 804_096}
CLASSES = {"resnet50[64, 64, 3]": 1000}  # every other variant: 10
GPT_OUT = {"gpt[64]-v65": [3, 64, 65], "gpt-bias-2x3x48[16]-v50": [3, 16, 50]}  # (windows, positions, vocabulary)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    directory = tmp_path_factory.mktemp("parity")
    # PYTHONPATH: a script's own folder comes first on sys.path, so without it an installed copy of hvdtrain
    # (an editable install of another checkout) could be the one tested.
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}

    def command(framework: str) -> list[str]:
        return [sys.executable, str(REPO / "tests" / "scripts" / "model_parity.py"), framework, str(directory)]

    # Keras loads the weights that torch writes: its process starts first and waits on its stdin for them, so
    # that importing TensorFlow overlaps torch's whole run.
    with subprocess.Popen(command("tensorflow"), cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as tf_side:
        try:
            torch_side = subprocess.run(command("torch"), cwd=REPO, env=env, capture_output=True, text=True,
                                        timeout=300)
            assert torch_side.returncode == 0, torch_side.stderr[-3000:]
            tf_out, tf_err = tf_side.communicate("torch is done\n", timeout=300)
        except BaseException:
            tf_side.kill()
            raise
    assert tf_side.returncode == 0, tf_err[-3000:]
    return {framework: json.loads(out.strip().splitlines()[-1])
            for framework, out in (("torch", torch_side.stdout), ("tensorflow", tf_out))}


def test_same_variables_in_the_same_order(reports: dict[str, dict]) -> None:
    torch_side, tf_side = reports["torch"], reports["tensorflow"]
    assert torch_side.keys() == tf_side.keys() and len(torch_side) == 23 + len(GPT_OUT)
    for key in torch_side:
        assert [n for n, _ in torch_side[key]["vars"]] == [n for n, _ in tf_side[key]["vars"]], key
        assert torch_side[key]["out"] == tf_side[key]["out"] == GPT_OUT.get(key, [3, CLASSES.get(key, 10)]), key
        assert torch_side[key].get("names") == tf_side[key].get("names"), key  # gpt: by torch's names
    totals = {key: sum(n for n, _ in entry["vars"]) for key, entry in torch_side.items()}
    assert {key: totals[key] for key in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert totals["mobilenet-x0.5[32, 32, 3]"] < totals["mobilenet[32, 32, 3]"] / 1.8  # every layer thinner
    assert totals["resnet-20[32, 32, 3]"] > 3 * totals["resnet-8[32, 32, 3]"]


def test_same_initial_distributions(reports: dict[str, dict]) -> None:
    # Uniform +-1/sqrt(fan_in) on both (torch's defaults); a fan-in counted differently (Keras counts a
    # depthwise kernel's channels) shows up as a ratio of sqrt(channels).
    for key, entry in reports["torch"].items():
        pairs = zip(entry["vars"], reports["tensorflow"][key]["vars"], strict=True)
        for index, ((n, torch_std), (_, tf_std)) in enumerate(pairs):
            if torch_std == 0:  # BatchNorm's gamma (ones) and beta (zeros)
                assert tf_std == 0, (key, index)
            elif n >= 100:
                assert 0.75 < tf_std / torch_std < 1.33, (key, index, torch_std, tf_std)


def test_same_outputs_with_the_same_weights(reports: dict[str, dict]) -> None:
    for key, entry in reports["tensorflow"].items():
        assert entry["max_rel_diff"] is not None and entry["max_rel_diff"] < 1e-5, (key, entry["max_rel_diff"])


def test_gpt_starts_alike_on_both_and_decodes_with_its_cache_as_without(reports: dict[str, dict]) -> None:
    names = reports["torch"]["gpt[64]-v65"]["names"]
    assert not [n for n in names if n.endswith(".bias")] and "lm_head.weight" not in names  # tied head
    assert len([n for n in reports["torch"]["gpt-bias-2x3x48[16]-v50"]["names"] if n.endswith(".bias")]) == 2 * 6 + 1
    for key in GPT_OUT:  # the same initial weights on both (hvdtrain/text/gpt_init.py), not only distributions
        assert reports["tensorflow"][key]["initial_max_rel_diff"] < 1e-5, key
    for framework in ("torch", "tensorflow"):  # the last position's logits, one cached token at a time
        for key in GPT_OUT:
            assert reports[framework][key]["cache_max_diff"] < 1e-5, (framework, key)
