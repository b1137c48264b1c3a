"""Per-epoch metrics of a training run: a log file (CSV or JSON lines) and a plot, both
rewritten after every epoch so they can be watched while the run goes on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

FIELDS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "samples_per_s")
LOG_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def log_format(path) -> str:
    """'csv' or 'jsonl' from the file's extension; a ValueError names the accepted ones."""
    suffix = Path(path).suffix.lower()
    try:
        return LOG_FORMATS[suffix]
    except KeyError:
        raise ValueError(f"--log {path}: unknown extension {suffix or '(none)'!r}; use .csv for CSV or "
                         f".jsonl (.json, .ndjson) for JSON lines") from None


class TrainingHistory:
    """Collects one row of :data:`FIELDS` per epoch; writes ``log_path`` and ``plot_path``
    (either may be None). Settings are checked here, before any training starts."""

    def __init__(self, log_path=None, plot_path=None, title: str = ""):
        self.log_path, self.plot_path, self.title = log_path, plot_path, title
        self.rows: list[dict] = []
        self._format = log_format(log_path) if log_path else None
        if plot_path:
            from ..plot import require_pyplot

            require_pyplot("--plot")  # fail now, not after the last epoch

    @property
    def wanted(self) -> bool:
        return bool(self.log_path or self.plot_path)

    def record(self, epoch: int, train: dict, test_loss: float, test_accuracy: float) -> dict:
        row = {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
               "test_loss": test_loss, "test_accuracy": test_accuracy, "samples_per_s": train["samples_per_s"]}
        self.rows.append(row)
        if self.log_path:
            self._append_log(row)
        if self.plot_path:
            from ..plot import plot_training_curves

            plot_training_curves(self.rows, self.plot_path, self.title)
        return row

    def _append_log(self, row: dict) -> None:
        first = len(self.rows) == 1  # this command's first epoch starts the file afresh
        with open(self.log_path, "w" if first else "a", newline="") as f:
            if self._format == "csv":
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if first:
                    writer.writeheader()
                writer.writerow(row)
            else:
                f.write(json.dumps(row) + "\n")
