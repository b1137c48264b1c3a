"""Shared helpers for the benchmark suites (importable: pyproject puts bench/ on sys.path)."""


def torch_or_none():
    """PyTorch if importable, for reference groups; None otherwise."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def require_torch():
    """PyTorch, or skip the benchmark saying why (it is the reference group, not a dependency)."""
    import pytest

    torch = torch_or_none()
    if torch is None:
        pytest.skip("PyTorch is not installed: no torch reference in this run")
    return torch


def torch_adam_step(torch, model, x, y, lr=1e-3):
    """A PyTorch eager training step (Adam, cross-entropy, grads set to None) on fixed host
    data, run once to warm up; returns the step function to time."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()

    step()
    return step
