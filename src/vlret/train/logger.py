"""Training logs: JSON lines (always) and TensorBoard scalars (when the tensorboard package is installed)."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsLogger:
    def __init__(self, folder: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = folder / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:  # optional: pip install tensorboard
            self._tb = None

    def log(self, record: dict, step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps({"kind": prefix, "step": step, **record}) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (a line cut off by a kill is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
