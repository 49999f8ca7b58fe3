"""The torch models: shapes and parameter counts by formula (tf_backend must match these counts)."""

from __future__ import annotations

import torch

from hvdtrain.config import ModelConfig, load_config, to_yaml
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


def feature_map(model: torch.nn.Module, shape: tuple[int, int, int]) -> tuple[int, ...]:
    """(C, H, W) reaching the global average pooling for one (H, W, C) image."""
    seen = []
    pool = next(m for m in model.modules() if isinstance(m, torch.nn.AdaptiveAvgPool2d))
    pool.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[1:])))
    assert model.eval()(torch.zeros(2, shape[2], shape[0], shape[1])).shape == (2, 10)
    return seen[0]


def resnet_count(depth: int, in_channels: int, widths: tuple[int, int, int] = (16, 32, 64)) -> int:
    """He et al.'s CIFAR ResNet with 1x1 projection shortcuts (conv without bias + BatchNorm) and our head."""
    bn = 2  # trainable per channel: gamma, beta
    total, cin = 9 * in_channels * widths[0] + bn * widths[0], widths[0]
    for cout in widths:
        for _ in range((depth - 2) // 6):
            total += 9 * cin * cout + bn * cout + 9 * cout * cout + bn * cout
            total += cin * cout + bn * cout if cin != cout else 0
            cin = cout
    return total + (widths[2] * 128 + 128) + (128 * 10 + 10)


def test_resnet_counts_by_formula() -> None:
    for depth, shape in ((8, (32, 32, 3)), (14, (8, 8, 1)), (20, (32, 32, 3))):
        assert count(build_model(ModelConfig(name="resnet", depth=depth), shape, 10)) == \
            resnet_count(depth, shape[2])
    assert resnet_count(20, 3) == 281434  # docs/models.md
    half = build_model(ModelConfig(name="resnet", depth=8, width_multiplier=0.5), (32, 32, 3), 10)
    assert count(half) == resnet_count(8, 3, (8, 16, 32))


def test_mobilenet_count_by_formula_and_width_multiplier() -> None:
    model = build_model(ModelConfig(name="mobilenet", channels=(32, 64)), (8, 8, 1), 10)
    # stem 3x3 conv 1->32 + BN; per block a 3x3 depthwise conv + BN, a 1x1 conv + BN; head 64->128->10.
    expected = (9 * 32 + 64) + (9 * 32 + 64 + 32 * 32 + 64) + (9 * 32 + 64 + 32 * 64 + 128) + 8320 + 1290
    assert count(model) == expected == 13930
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert [m.groups for m in depthwise] == [32, 32]
    thin = build_model(ModelConfig(name="mobilenet", channels=(32, 64), width_multiplier=0.25), (8, 8, 1), 10)
    assert [m.out_channels for m in thin.modules() if isinstance(m, torch.nn.Conv2d)] == [8, 8, 8, 8, 16]
    tiny = ModelConfig(name="mobilenet", width_multiplier=0.01)
    assert tiny.scaled(32) == 1  # rounded, never below one channel


def test_downsampling_stops_at_two_by_two() -> None:
    # Stride 2 only while the map is at least 4x4: digits' 8x8 ends at 2x2 however deep the network.
    deep = ModelConfig(name="mobilenet", channels=(8, 8, 8, 8, 8))
    assert feature_map(build_model(deep, (8, 8, 1), 10), (8, 8, 1)) == (8, 2, 2)
    assert feature_map(build_model(deep, (32, 32, 3), 10), (32, 32, 3)) == (8, 2, 2)
    assert feature_map(build_model(deep, (3, 3, 1), 10), (3, 3, 1)) == (8, 3, 3)
    resnet = ModelConfig(name="resnet", depth=8)
    assert feature_map(build_model(resnet, (8, 8, 1), 10), (8, 8, 1)) == (64, 2, 2)
    assert feature_map(build_model(resnet, (32, 32, 3), 10), (32, 32, 3)) == (64, 8, 8)
    assert feature_map(build_model(resnet, (1, 1, 1), 10), (1, 1, 1)) == (64, 1, 1)


def test_dropout_in_the_heads_of_the_compact_models() -> None:
    for name in ("mobilenet", "resnet", "cnn"):
        model = build_model(ModelConfig(name=name, depth=8, hidden_units=(32, 16), dropout=0.3), (8, 8, 1), 10)
        rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
        assert rates == [0.3, 0.3], name
        plain = build_model(ModelConfig(name=name, depth=8, hidden_units=(32,)), (8, 8, 1), 10)
        assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())


# ---------------------------------------------------------------------------------------------- resnet50

def resnet50_count(in_channels: int, num_classes: int, multiplier: float = 1.0, hidden: tuple[int, ...] = ()) -> int:
    """torchvision's resnet50 by formula: convs without bias, 2 trainable values per BatchNorm channel."""
    def scaled(c: int) -> int:
        return max(1, round(c * multiplier))

    stem = scaled(64)
    total, cin = 49 * in_channels * stem + 2 * stem, stem
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        w = scaled(width)
        for block in range(blocks):
            total += cin * w + 2 * w + 9 * w * w + 2 * w + w * 4 * w + 2 * 4 * w
            strided = stage > 0 and block == 0
            total += cin * 4 * w + 2 * 4 * w if strided or cin != 4 * w else 0  # the downsample shortcut
            cin = 4 * w
    for units in hidden:
        total += cin * units + units
        cin = units
    return total + cin * num_classes + num_classes


def test_resnet50_has_torchvisions_parameter_count() -> None:
    model = build_model(load_config(None, ["model.name=resnet50"]).model, (224, 224, 3), 1000)
    assert count(model) == resnet50_count(3, 1000) == 25_557_032  # torchvision.models.resnet50().parameters()
    assert count(build_model(ModelConfig(name="resnet50"), (32, 32, 3), 10)) == resnet50_count(3, 10) == 23_528_522
    thin = ModelConfig(name="resnet50", width_multiplier=0.25, hidden_units=(64,), dropout=0.5)
    assert count(build_model(thin, (15, 12, 1), 10)) == resnet50_count(1, 10, 0.25, (64,))


def test_resnet50_is_torchvisions_v1_5_layout() -> None:
    model = build_model(ModelConfig(name="resnet50"), (64, 64, 3), 1000)
    state = model.state_dict()
    # torchvision's module names and shapes: its resnet50 state_dict (320 tensors) loads with strict=True.
    assert len(state) == 320
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1)
    assert state["fc.weight"].shape == (1000, 2048) and state["fc.bias"].shape == (1000,)
    assert sum(key.endswith("downsample.0.weight") for key in state) == 4  # the first block of each stage
    convs = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert (convs["conv1"].stride, convs["conv1"].padding) == ((2, 2), (3, 3))
    for stage in (2, 3, 4):  # v1.5: the stride is in the 3x3, not the first 1x1
        assert convs[f"layer{stage}.0.conv1"].stride == (1, 1)
        assert (convs[f"layer{stage}.0.conv2"].stride, convs[f"layer{stage}.0.conv2"].padding) == ((2, 2), (1, 1))
        assert convs[f"layer{stage}.0.downsample.0"].stride == (2, 2)
    assert convs["layer1.0.conv2"].stride == (1, 1)
    assert all(conv.bias is None for conv in convs.values())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 53 and {(m.eps, m.momentum) for m in norms} == {(1e-5, 0.1)}
    pool = next(m for m in model.modules() if isinstance(m, torch.nn.MaxPool2d))
    assert (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)


def test_resnet50_feature_maps_and_smallest_inputs() -> None:
    model = build_model(ModelConfig(name="resnet50"), (32, 32, 3), 10)
    assert feature_map(model, (32, 32, 3)) == (2048, 1, 1)
    thin = build_model(ModelConfig(name="resnet50", width_multiplier=0.125), (224, 224, 3), 10)  # fast on a CPU
    assert feature_map(thin, (224, 224, 3)) == (256, 7, 7)
    assert feature_map(thin, (64, 64, 3)) == (256, 2, 2)
    assert feature_map(thin, (15, 12, 3)) == (256, 1, 1)  # every stride 2 maps n to ceil(n / 2)
    assert feature_map(thin, (1, 1, 3)) == (256, 1, 1)


def test_resnet50_head_rule() -> None:
    # null hidden_units: torchvision's pool -> fc for resnet50, [128] for the others; explicit lists are kept.
    assert load_config(None, ["model.name=resnet50"]).model.hidden_units == ()
    assert load_config(None, ["model.name=resnet"]).model.hidden_units == (128,)
    assert load_config(None, []).model.hidden_units == (128,)
    assert load_config(None, ["model.name=resnet50", "model.hidden_units=[256]"]).model.hidden_units == (256,)
    assert load_config(None, ["model.name=cnn", "model.hidden_units=[]"]).model.hidden_units == ()
    assert load_config(None, ["model.name=resnet50", "model.hidden_units=null"]).model.hidden_units == ()
    assert "hidden_units: []" in to_yaml(load_config(None, ["model.name=resnet50"]))  # saved resolved
    plain = build_model(ModelConfig(name="resnet50"), (32, 32, 3), 10)
    assert [type(m) for m in plain.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Dropout))] == [torch.nn.Linear]
    headed = build_model(ModelConfig(name="resnet50", hidden_units=(32,), dropout=0.3), (32, 32, 3), 10)
    assert [type(m).__name__ for m in headed.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Dropout))] == \
        ["Linear", "Dropout", "Linear"]
    assert headed.fc.in_features == 32 and list(headed.state_dict())[-2:] == ["fc.weight", "fc.bias"]


def test_a_users_sequence_model_is_probed_with_token_ids(tmp_path, monkeypatch) -> None:
    """task=language_model: the builder gets (block_size,) and the vocabulary; image logits are refused."""
    import pytest

    from hvdtrain.errors import ConfigError

    (tmp_path / "seq_models.py").write_text(
        "import torch\n"
        "def table(cfg, input_shape, num_classes):\n"
        "    assert input_shape == (12,)\n"
        "    return torch.nn.Embedding(num_classes, num_classes)\n"
        "def pooled(cfg, input_shape, num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Embedding(num_classes, 4), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(4 * input_shape[0], num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(ModelConfig(name="seq_models:table"), (12,), 30, tokens=True)
    assert model(torch.zeros(3, 12, dtype=torch.long)).shape == (3, 12, 30)
    refused = r"outputs \[2, 30\] for token ids of shape \[2, 12\], expected \[2, 12, 30\]"
    with pytest.raises(ConfigError, match=refused):
        build_model(ModelConfig(name="seq_models:pooled"), (12,), 30, tokens=True)


def test_narrow_resnet_gradients_in_channels_last_equal_the_contiguous_layouts() -> None:
    """resnet at width 0.25 (4 channels into its strided 1x1 shortcuts) trained as hvdtrain feeds it: NHWC batches
    viewed as NCHW (channels-last memory), one thread. oneDNN's strided 1x1 kernel crashed, hung or gave wrong
    weight gradients there on AVX2 CPUs (torch_backend/models.py StridedPointwiseConv); the gradients must equal
    those of the same batch in contiguous NCHW memory, a different kernel path (float32 sums: 1e-5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="resnet", depth=8, width_multiplier=0.25), (16, 16, 3), 10)
        images, labels = torch.randn(8, 16, 16, 3), torch.randint(0, 10, (8,))
        grads = []
        for batch in (images.permute(0, 3, 1, 2), images.permute(0, 3, 1, 2).contiguous()):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(batch), labels).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    finally:
        torch.set_num_threads(threads)
    shortcut = [n for n in grads[0] if "shortcut.0" in n]
    assert shortcut, "the model has no strided 1x1 shortcut"
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-5, msg=name)
