"""Metric writers: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard, progress bar.

Only process 0 writes. Array-valued metrics (e.g. per-block ESS) go to the JSON line as lists and to
TensorBoard as one scalar per entry.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import jax
import numpy as np


def to_python(metrics: dict[str, Any]) -> dict[str, Any]:
    """Fetched metrics as floats / lists of floats (JSON-serialisable)."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        out[k] = float(a) if a.ndim == 0 else [float(x) for x in a.reshape(-1)]
    return out


class MetricWriter:
    """Appends to ``workdir/metrics.jsonl`` and writes TensorBoard events under ``workdir/tensorboard``."""

    def __init__(self, workdir: str, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            self._f = open(self.path, "a")
            if tensorboard:
                try:
                    from tensorboardX import SummaryWriter
                    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
                except ImportError:
                    self._tb = None

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **metrics}
        self._f.write(json.dumps(row, allow_nan=True) + "\n")
        self._f.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, list):
                    for i, x in enumerate(v):
                        self._tb.add_scalar(f"{k}/{i}", x, step)
                elif isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._f.close()
            if self._tb is not None:
                self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
    """All rows of ``workdir/metrics.jsonl``."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


class Progress:
    """A tqdm progress bar with steps/s, tokens/s, ETA and loss (process 0 only)."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, info: dict[str, float]) -> None:
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else v)
                              for k, v in info.items()}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
