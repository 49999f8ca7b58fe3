"""PyTorch versions of the built-in models; tf_backend/models.py builds the same layers for Keras (same
parameter counts, same padding, BatchNorm with eps 1e-5 and running-average momentum 0.1 (Keras: 0.9))."""

from __future__ import annotations

import torch
from torch import nn

from hvdtrain.config import ModelConfig
from hvdtrain.features.user_model import build_user_model, check_logits, check_token_logits, probe_failed


def _head(features: int, cfg: ModelConfig, num_classes: int) -> list[nn.Module]:
    """Hidden dense layers (ReLU, dropout) and the output layer."""
    layers: list[nn.Module] = []
    for units in cfg.head_units():
        layers += [nn.Linear(features, units), nn.ReLU()]
        if cfg.dropout > 0:
            layers.append(nn.Dropout(cfg.dropout))
        features = units
    return [*layers, nn.Linear(features, num_classes)]


class StridedPointwiseConv(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as every s-th pixel through a stride-1 1x1 convolution: the same
    numbers, parameters and state-dict keys as nn.Conv2d(cin, cout, 1, stride=s).

    Why: on AVX2-only CPUs, oneDNN's strided 1x1 kernel computes the weight gradient of channels-last input with
    fewer than 8 input channels past the end of its workspace (uxlfoundation/oneDNN#6035, open): a segfault, a
    hang or wrong gradients, seen with torch 2.13 here (resnet at width_multiplier 0.25: 4 channels). Channels-last
    is the layout hvdtrain's batches arrive in; a stride-1 1x1 convolution takes another, correct path."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return nn.functional.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias, 1, 0, 1, self.groups)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = StridedPointwiseConv if kernel == 1 and stride > 1 else nn.Conv2d
    return [conv(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)]


def _plain(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(image_shape) == 1:  # feature vectors (mlp only: hvdtrain/training/setup.py checks)
        return nn.Sequential(*_head(image_shape[0], cfg, num_classes))
    height, width, channels = image_shape
    layers: list[nn.Module] = []
    if cfg.name == "cnn":
        for out in cfg.channels:
            layers += [nn.Conv2d(channels, out, kernel_size=3, padding=1), nn.ReLU()]
            if min(height, width) >= 2:
                layers.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            channels = out
    return nn.Sequential(*layers, nn.Flatten(), *_head(height * width * channels, cfg, num_classes))


def _mobilenet(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 3x3 stem, then per entry of `channels` a depthwise 3x3 (stride 2 while the map is at least 4x4) and a
    pointwise 1x1 conv, each with BatchNorm and ReLU; global average pooling and the head."""
    height, width, channels = image_shape
    stem = cfg.scaled(cfg.channels[0])
    layers: list[nn.Module] = [*_conv_bn(channels, stem, 3), nn.ReLU()]
    channels, size = stem, min(height, width)
    for out in (cfg.scaled(c) for c in cfg.channels):
        stride = 2 if size >= 4 else 1
        size = (size - 1) // stride + 1
        layers += [*_conv_bn(channels, channels, 3, stride, groups=channels), nn.ReLU(),
                   *_conv_bn(channels, out, 1), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_head(channels, cfg, num_classes))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a shortcut (a strided 1x1 conv + BatchNorm when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_conv_bn(cin, cout, 3, stride), nn.ReLU(), *_conv_bn(cout, cout, 3))
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout \
            else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.body(x) + self.shortcut(x))
        return out


def _resnet(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """He et al.'s CIFAR ResNet: a 3x3 stem, three stages of (depth - 2) / 6 basic blocks with widths
    16, 32, 64 (x width_multiplier), stride 2 at the start of stages 2 and 3 while the map is at least 4x4."""
    height, width, channels = image_shape
    blocks_per_stage = (cfg.depth - 2) // 6
    widths = [cfg.scaled(w) for w in (16, 32, 64)]
    layers: list[nn.Module] = [*_conv_bn(channels, widths[0], 3), nn.ReLU()]
    channels, size = widths[0], min(height, width)
    for stage, out in enumerate(widths):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 and size >= 4 else 1
            size = (size - 1) // stride + 1
            layers.append(BasicBlock(channels, out, stride))
            channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), *_head(channels, cfg, num_classes))


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck, with its attribute names: 1x1 conv to `width`, 3x3 conv with the
    block's stride, 1x1 conv to `cout`, each with BatchNorm (ReLU after the first two); the shortcut
    (`downsample`: a strided 1x1 conv + BatchNorm when the shape changes) is added before the last ReLU."""

    def __init__(self, cin: int, width: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, width, 1)
        self.conv2, self.bn2 = _conv_bn(width, width, 3, stride)
        self.conv3, self.bn3 = _conv_bn(width, cout, 1)
        self.relu = nn.ReLU()
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        result: torch.Tensor = self.relu(out + shortcut)
        return result


RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # bottleneck width, blocks; outputs are width x 4


class ResNet50(nn.Module):
    """torchvision's resnet50 (v1.5: the stride sits in the bottleneck's 3x3 conv) with the same module
    names, so torchvision's state_dict loads into the default head: a 7x7/2 stem conv (padding 3) with
    BatchNorm and ReLU, a 3x3/2 max-pool (padding 1), stages of [3, 4, 6, 3] bottlenecks with widths 64, 128,
    256, 512 (x width_multiplier, outputs x4; stride 2 at the start of stages 2-4), global average pooling,
    then `hidden` (the head's hidden layers, empty by default) and `fc`. Every stride-2 layer maps n pixels to
    ceil(n / 2), so any input of at least 1x1 runs; 32x32 reaches the last stage at 1x1, 224x224 at 7x7."""

    def __init__(self, cfg: ModelConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        stem = cfg.scaled(64)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-5, momentum=0.1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = stem
        for index, (width, blocks) in enumerate(RESNET50_STAGES):
            width = cfg.scaled(width)
            stage = []
            for block in range(blocks):
                stage.append(Bottleneck(channels, width, 4 * width, 2 if index > 0 and block == 0 else 1))
                channels = 4 * width
            self.add_module(f"layer{index + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        head = _head(channels, cfg, num_classes)
        self.hidden = nn.Sequential(*head[:-1])  # registered before fc: variables in the order they are used
        self.fc = head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(len(RESNET50_STAGES)):
            x = getattr(self, f"layer{index + 1}")(x)
        out: torch.Tensor = self.fc(self.hidden(self.flatten(self.avgpool(x))))
        return out


def _user_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int, tokens: bool = False) -> nn.Module:
    """The user's nn.Module, run once on a zero batch in eval mode: that materialises lazy layers
    (nn.LazyLinear...) and checks that it maps NCHW images to `num_classes` logits (`tokens`: token ids to
    next-token logits)."""
    model = build_user_model(cfg, image_shape, num_classes, nn.Module, "torch")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if tokens:
        batch = torch.zeros(2, image_shape[0], dtype=torch.long, device=device)
    elif len(image_shape) == 1:
        batch = torch.zeros(2, image_shape[0], device=device)
    else:
        height, width, channels = image_shape
        batch = torch.zeros(2, channels, height, width, device=device)
    training = model.training
    try:
        with torch.no_grad():
            output = model.eval()(batch)
    except Exception as exc:
        probe_failed(exc, cfg.name, tuple(batch.shape), "NCHW")
        raise
    finally:
        model.train(training)
    if tokens:
        check_token_logits(cfg.name, output, tuple(batch.shape), num_classes)
    else:
        check_logits(cfg.name, output, tuple(batch.shape), num_classes)
    return model


def build_model(cfg: ModelConfig, image_shape: tuple[int, ...], num_classes: int, tokens: bool = False,
                seed: int = 0) -> nn.Module:
    """The model named by `cfg.name` for NCHW input of `image_shape` given as (H, W, C); `tokens`
    (task=language_model): token windows of `image_shape` = (block_size,), `num_classes` the vocabulary."""
    if ":" in cfg.name:
        return _user_model(cfg, image_shape, num_classes, tokens)
    if cfg.name == "gpt":  # image_shape: (block_size,) token windows; num_classes: the vocabulary
        from torch_backend.gpt import build_gpt

        return build_gpt(cfg, image_shape[0], num_classes, seed)
    if cfg.name == "mobilenet":
        return _mobilenet(cfg, image_shape, num_classes)
    if cfg.name == "resnet":
        return _resnet(cfg, image_shape, num_classes)
    if cfg.name == "resnet50":
        return ResNet50(cfg, image_shape[2], num_classes)
    return _plain(cfg, image_shape, num_classes)
