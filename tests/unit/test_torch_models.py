"""The torch models: shapes and parameter counts by formula (tf_backend must match these counts)."""

from __future__ import annotations

import torch

from hvdtrain.config import ModelConfig
from torch_backend.models import build_model


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cnn_on_digits_shape_and_count() -> None:
    model = build_model(ModelConfig(name="cnn", channels=(32, 64), hidden_units=(128,)), (8, 8, 1), 10)
    out = model(torch.zeros(4, 1, 8, 8))
    assert out.shape == (4, 10)
    # conv 1->32, conv 32->64 (3x3 + bias); two pools 8->4->2; dense 2*2*64->128; head 128->10.
    expected = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (2 * 2 * 64 * 128 + 128) + (128 * 10 + 10)
    assert count(model) == expected == 53002


def test_cnn_stops_pooling_at_one_pixel() -> None:
    model = build_model(ModelConfig(name="cnn", channels=(4, 4, 4, 4, 4), hidden_units=()), (8, 8, 3), 5)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    pools = sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert pools == 3  # 8 -> 4 -> 2 -> 1, then no more


def test_mlp_count_and_dropout() -> None:
    model = build_model(ModelConfig(name="mlp", hidden_units=(64, 32), dropout=0.5), (8, 8, 1), 10)
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert count(model) == (64 * 64 + 64) + (64 * 32 + 32) + (32 * 10 + 10)
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.modules()) == 2
