"""Small networks for proving layers one behaviour at a time.

Start with the smallest network that shows a behaviour (one convolution), then add one thing at
a time (pooling, a second convolution, normalisation, a dense head). Each builder returns a root
layer to hand to :func:`juicepy.testing.check_layer` together with an input unit shape.
"""

from __future__ import annotations

from .. import layers as L


def one_conv(out_channels: int = 4, kernel_size=3, stride=1, padding=0, dilation=1, groups: int = 1,
             bias: bool = True) -> L.Layer:
    """A single Conv2d with every hyper-parameter exposed."""
    return L.Sequential(L.Conv2d(out_channels, kernel_size, stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, bias=bias))


def conv_pool(out_channels: int = 4, kernel_size=3, padding=0, pool: str = "max", pool_size=2,
              pool_stride=None, pool_padding=0) -> L.Layer:
    """Conv2d then MaxPool2d (``pool="max"``) or AvgPool2d (``pool="avg"``)."""
    pools = {"max": L.MaxPool2d, "avg": L.AvgPool2d}
    if pool not in pools:
        raise ValueError(f"conv_pool: pool must be one of {sorted(pools)}, got {pool!r}")
    return L.Sequential(L.Conv2d(out_channels, kernel_size, padding=padding),
                        pools[pool](pool_size, pool_stride, pool_padding))


def two_convs(channels=(4, 6), kernel_size=3, padding=1, activation: bool = True) -> L.Layer:
    """Two Conv2d layers (with a ReLU between them unless ``activation=False``)."""
    middle = [L.ReLU()] if activation else []
    return L.Sequential(L.Conv2d(channels[0], kernel_size, padding=padding), *middle,
                        L.Conv2d(channels[1], kernel_size, padding=padding))


def conv_bn_relu(out_channels: int = 4, kernel_size=3, padding=1, momentum=0.1, eps: float = 1e-5) -> L.Layer:
    """Conv2d (no bias: BatchNorm's shift replaces it) -> BatchNorm2d -> ReLU."""
    return L.Sequential(L.Conv2d(out_channels, kernel_size, padding=padding, bias=False),
                        L.BatchNorm2d(momentum=momentum, eps=eps), L.ReLU())


def dense_head(classes: int = 3, out_channels: int = 4, kernel_size=3, padding=1, hidden: int | None = None,
               pool: bool = True) -> L.Layer:
    """Conv2d -> ReLU (-> MaxPool2d 2) -> Flatten (-> Linear hidden -> ReLU) -> Linear classes."""
    parts = [L.Conv2d(out_channels, kernel_size, padding=padding), L.ReLU()]
    if pool:
        parts.append(L.MaxPool2d(2))
    parts.append(L.Flatten())
    if hidden:
        parts += [L.Linear(hidden), L.ReLU()]
    parts.append(L.Linear(classes))
    return L.Sequential(*parts)
