"""A small ResNet (He et al. 2016, the CIFAR-style variant) for small images: a 3x3 stem, stages
of basic residual blocks (two 3x3 convs with batch norm and an identity or 1x1 projection
shortcut), global average pooling and a linear classifier. Param paths: "stem.0.weight",
"stage2.0.0.block.0.weight" (stage, block, its Residual, the residual branch, layer),
"stage2.0.0.shortcut.0.weight", "fc.weight"."""

from __future__ import annotations

from .. import layers as L


def basic_block(channels: int, stride: int = 1, project: bool = False) -> L.Layer:
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)); the shortcut projects (1x1 conv, stride)
    when the shape changes."""
    body = L.Sequential(
        L.Conv2d(channels, 3, stride=stride, padding=1, bias=False, weight_init="he_normal"),
        L.BatchNorm2d(), L.ReLU(),
        L.Conv2d(channels, 3, padding=1, bias=False, weight_init="he_normal"),
        L.BatchNorm2d())
    shortcut = L.Sequential(L.Conv2d(channels, 1, stride=stride, bias=False), L.BatchNorm2d()) if project else None
    return L.Sequential(L.Residual(body, shortcut), L.ReLU())


def resnet(input_shape: tuple, classes: int, widths=(16, 32, 64), blocks_per_stage: int = 1):
    """``len(widths)`` stages; every stage after the first halves the height and width."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet expects image inputs (channels, height, width), got unit shape {input_shape}")
    parts = {"stem": L.Sequential(L.Conv2d(widths[0], 3, padding=1, bias=False, weight_init="he_normal"),
                                  L.BatchNorm2d(), L.ReLU())}
    channels = widths[0]
    for i, width in enumerate(widths):
        blocks = []
        for b in range(blocks_per_stage):
            stride = 2 if i > 0 and b == 0 else 1
            blocks.append(basic_block(width, stride, project=stride != 1 or width != channels))
            channels = width
        parts[f"stage{i + 1}"] = L.Sequential(*blocks)
    parts["pool"] = L.GlobalAvgPool2d()
    parts["fc"] = L.Linear(classes)
    return L.Sequential(parts)
