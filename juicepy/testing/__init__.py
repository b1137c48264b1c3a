"""Reusable checks for people writing layers: gradient checks, backend parity, small test nets."""

from .gradcheck import (LayerReport, check_layer, check_loss, finite_difference_error, forward_backward,
                        numeric_check, random_inputs)
from .nets import conv_bn_relu, conv_pool, dense_head, one_conv, two_convs

__all__ = ["LayerReport", "check_layer", "check_loss", "finite_difference_error", "forward_backward",
           "numeric_check", "random_inputs",
           "one_conv", "conv_pool", "two_convs", "conv_bn_relu", "dense_head"]
