"""LeNet-5 (ReLU and max pooling, as it is usually trained today)."""

from __future__ import annotations

from .. import layers as L

#: below this height/width the 5x5 kernels leave nothing to pool: use padded 3x3 kernels instead
_SMALL_INPUT = 16


def lenet(input_shape: tuple, classes: int):
    """LeNet-5 for (C, H, W) inputs: conv 6 k5 pad 2, maxpool 2, conv 16 k5, maxpool 2,
    120-84-classes (400 features at the flatten for 28x28). Inputs smaller than 16x16 (such as
    the 8x8 digits) get 3x3 kernels with padding 1, so each pooling halves a full-size map."""
    if len(input_shape) != 3:
        raise ValueError(f"lenet expects an input shape (channels, height, width), got {tuple(input_shape)}")
    if min(input_shape[1:]) < _SMALL_INPUT:
        conv1, conv2 = L.Conv2d(6, 3, padding=1), L.Conv2d(16, 3, padding=1)
    else:
        conv1, conv2 = L.Conv2d(6, 5, padding=2), L.Conv2d(16, 5)
    return L.Sequential(
        conv1, L.ReLU(), L.MaxPool2d(2),
        conv2, L.ReLU(), L.MaxPool2d(2),
        L.Flatten(),
        L.Linear(120), L.ReLU(),
        L.Linear(84), L.ReLU(),
        L.Linear(classes),
    )
