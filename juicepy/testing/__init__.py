"""Reusable checks for people writing layers: gradient checks, backend parity, small test nets."""

from .gradcheck import LayerReport, check_layer, check_loss, numeric_check, random_inputs

__all__ = ["LayerReport", "check_layer", "check_loss", "numeric_check", "random_inputs"]
