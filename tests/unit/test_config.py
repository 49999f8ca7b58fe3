"""Config loading: YAML + overrides, strict validation, and the generated reference."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO

from hvdtrain.config import Config, all_keys, config_hash, load_config, reference_markdown, to_yaml
from hvdtrain.errors import ConfigError

PUBLIC_KEYS = ["backend", "seed", "data.name", "data.path", "data.val_fraction", "model.name", "train.epochs",
               "train.batch_size", "optim.name", "optim.lr", "optim.momentum", "optim.weight_decay",
               "run.dir"]


def test_public_keys_exist() -> None:
    assert set(PUBLIC_KEYS) <= set(all_keys())


def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert cfg.backend == "torch" and cfg.train.batch_size == 32


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 0.2, name: adam}\ntrain: {epochs: 4}\n")
    cfg = load_config(path, ["optim.lr=0.05", "train.epochs=3", "model.channels=[16,32]",
                             "data.image_size=[12, 10]", "optim.eps=1e-7", "run.dir=runs/x"])
    assert cfg.optim.lr == 0.05 and cfg.optim.name == "adam"
    assert cfg.train.epochs == 3
    assert cfg.model.channels == (16, 32)
    assert cfg.data.image_size == (12, 10)
    assert cfg.optim.eps == pytest.approx(1e-7)
    assert cfg.run.dir == "runs/x"


def test_null_and_int_for_float() -> None:
    cfg = load_config(None, ["optim.lr=1", "train.max_steps_per_epoch=null"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps_per_epoch is None


def test_resolved_yaml_roundtrips(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "digits.yaml", ["optim.lr=0.01"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_config(path, ["optim.lr=0.02"])) != config_hash(cfg)


def test_run_dir_placeholders() -> None:
    cfg = load_config(None, ["backend=tensorflow", "model.name=mlp"])
    assert str(cfg.run_dir()) == "runs/digits-mlp-tensorflow"


@pytest.mark.parametrize("overrides, fragment", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr': did you mean 'optim.lr'?"),
    (["trian.epochs=3"], "did you mean 'train.epochs'?"),
    (["train.batch_size=0"], "train.batch_size: 0 is below the minimum 1"),
    (["train.batch_size=abc"], "train.batch_size: expected an integer, got 'abc'"),
    (["train.batch_size=2.5"], "train.batch_size: expected an integer"),
    (["train.epochs=true"], "train.epochs: expected an integer"),
    (["optim.lr=-1"], "optim.lr: -1.0 is below the minimum 0.0"),
    (["optim.lr=fast"], "optim.lr: expected a number"),
    (["optim.momentum=1.0"], "optim.momentum: 1.0 must be below 1.0"),
    (["optim.name=sgdd"], "optim.name: 'sgdd' is not one of sgd, adam, adamw (did you mean 'sgd'?"),
    (["backend=pytorch"], "backend: 'pytorch' is not one of torch, tensorflow"),
    (["optim.nesterov=yes please"], "optim.nesterov: expected true/false"),
    (["model.channels=8"], "model.channels: expected a list of integers"),
    (["model.channels=[]"], "model.channels: expected a list of integers"),
    (["model.channels=[8,0]"], "model.channels: 0 is below the minimum 1"),
    (["data.synthetic_shape=[8,8]"], "data.synthetic_shape: expected a list of 3 integers"),
    (["data.val_fraction=1.5"], "data.val_fraction: 1.5 must be below 1.0"),
    (["data=digits"], "'data' is a section"),
    (["optim.lr.x=1"], "config key optim.lr is a value, not a section"),
    (["no_equals_sign"], "override 'no_equals_sign' is not key=value"),
    (["=3"], "is not key=value"),
    (["tracking.tags=[team]"], "tracking.tags: 'team' is not KEY=VALUE: write it as tracking.tags=[team=vision]"),
    (["tracking.timeout_s=0"], "tracking.timeout_s: 0.0 must be above 0.0"),
    (["tracking.mlflow_uri=localhost:5000"], "tracking.mlflow_uri: 'localhost:5000' is not an MLflow tracking URI"),
    (["tracking.wandb_mode=shared"], "tracking.wandb_mode"),
])
def test_bad_overrides(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: {lr: 0.1\ntrain: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml' at line \d+"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  lr: 0.1\n  momentun: 0.5\n")
    with pytest.raises(ConfigError, match="did you mean 'optim.momentum'"):
        load_config(nested)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(binary)


def test_reference_is_in_sync_with_docs() -> None:
    """docs/config.md is generated; regenerate it with `make docs` when this fails."""
    assert (REPO / "docs" / "config.md").read_text().strip() == reference_markdown().strip()


def test_every_key_documented() -> None:
    text = reference_markdown()
    for key in all_keys():
        assert f"| `{key}` |" in text


def test_tracking_tags_as_a_map_or_as_entries(tmp_path: Path) -> None:
    config = tmp_path / "tags.yaml"
    config.write_text("tracking:\n  tags:\n    team: vision\n    site: hpc\n")
    assert load_config(config).tracking.tags == ("team=vision", "site=hpc")
    assert load_config(None, ["tracking.tags.team=vision"]).tracking.tag_map() == {"team": "vision"}
    assert load_config(None, ["tracking.tags=[team=vision,site=hpc]"]).tracking.tag_map() == {"team": "vision",
                                                                                             "site": "hpc"}


def test_compile_mode_is_torchs_and_refused_on_tensorflow() -> None:
    assert load_config(None, ["train.compile=true", "train.compile_mode=max-autotune"]).train.compile_mode == \
        "max-autotune"
    assert load_config(None, ["backend=tensorflow", "train.compile=true"]).train.compile is True
    with pytest.raises(ConfigError, match="train.compile_mode=reduce-overhead is a torch.compile mode, but "
                                          "backend=tensorflow compiles with XLA"):
        load_config(None, ["backend=tensorflow", "train.compile=true", "train.compile_mode=reduce-overhead"])
    with pytest.raises(ConfigError, match="compile_mode"):
        load_config(None, ["train.compile=true", "train.compile_mode=fast"])
    with pytest.raises(ConfigError, match="train.compile_mode=max-autotune chooses how train.compile compiles, but "
                                          "train.compile=false: set train.compile=true"):
        load_config(None, ["train.compile_mode=max-autotune"])
