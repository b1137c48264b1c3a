"""Pictures of training runs (and the helper bench/report.py charts with): matplotlib, an
optional extra, drawn with the Agg backend so no display is needed."""

from __future__ import annotations

from .errors import MissingExtraError
from .io.atomic import atomic_path

PLOT_EXTRA = "pip install 'juicepy[plot]'"


def require_pyplot(feature: str):
    """matplotlib.pyplot on the Agg backend, or a MissingExtraError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise MissingExtraError(f"{feature} draws with matplotlib, which is not installed ({err}); "
                                f"install the plot extra: {PLOT_EXTRA}") from None
    return plt


def save_figure(fig, path) -> None:
    """Write ``fig`` as a PNG atomically (a viewer never sees half a file) and free it."""
    plt = require_pyplot("saving a figure")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)


def plot_training_curves(history: list[dict], path, title: str = "") -> None:
    """Loss (train and test) and accuracy (train and test) per epoch, side by side, as a PNG.

    ``history`` holds one dict per epoch with ``epoch``, ``train_loss``, ``test_loss``,
    ``train_accuracy`` and ``test_accuracy``.
    """
    plt = require_pyplot("--plot")
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    from matplotlib.ticker import MaxNLocator

    for ax, metric, label in ((loss_ax, "loss", "mean loss"), (acc_ax, "accuracy", "accuracy")):
        for split, style in (("train", "o-"), ("test", "s--")):
            ax.plot(epochs, [row[f"{split}_{metric}"] for row in history], style, label=split, markersize=4)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylim(top=1.0)
    loss_ax.set_title("loss per epoch")
    acc_ax.set_title("accuracy per epoch")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
