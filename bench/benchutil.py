"""Shared helpers for the benchmark suites (importable: pyproject puts bench/ on sys.path)."""


def torch_or_none():
    """PyTorch if importable, for reference groups; None otherwise."""
    try:
        import torch
    except ImportError:
        return None
    return torch
