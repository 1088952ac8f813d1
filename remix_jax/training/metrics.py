"""Metric writers: WORKDIR/metrics.jsonl (one JSON object per logged step), TensorBoard, progress bar.

Only process 0 writes. Array-valued metrics (e.g. per-block ESS) go to the JSON line as lists and to
TensorBoard as one scalar per entry.

Resuming from step s (``MetricWriter(..., resume_step=s)``): rows the interrupted run logged after its
checkpoint at s are dropped from metrics.jsonl (rewritten atomically) and purged from TensorBoard, so every
step is logged once, by the run whose state continued. Kept: rows of steps < s, and the rows of step s up to
its training row (which is logged before the checkpoint is written); a final evaluation row at s written
after the checkpoint is dropped, as it is evaluated again.

Rates (steps/s, tokens/s, the bar's rate and ETA) divide by step time: ``StepTimer`` leaves out the time
spent in evaluation and checkpoint saving.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
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


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch. tensorboardX imports torch when it is
    installed, only to accept torch tensors as values (1.4 s at the start of every run on a 2-core CPU); we log
    Python numbers. torch is hidden for the duration of that one import and visible again after it; when torch or
    tensorboardX is already imported this is a plain import."""
    if "torch" in sys.modules or "tensorboardX.writer" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends to ``workdir/metrics.jsonl`` and writes TensorBoard events under ``workdir/tensorboard``.

    resume_step: the step the run (re)starts from; rows logged after it by an interrupted run are dropped
    first (``dropped`` counts them). None: append to the file as it is.
    """

    def __init__(self, workdir: str, tensorboard: bool = True, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.dropped = 0
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            if resume_step is not None:
                self.dropped = drop_rows_after(self.path, resume_step)
            self._f = open(self.path, "a")
            if tensorboard:
                try:
                    SummaryWriter = _summary_writer_class()
                    purge = None if resume_step is None else resume_step + 1  # hide the dropped steps' events
                    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=purge)
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


def drop_rows_after(path: str, step: int) -> int:
    """Rewrite the metrics file ``path`` (atomically) without the rows an interrupted run logged after its
    checkpoint at ``step`` (see the module docstring); returns how many rows were dropped. An unfinished last
    line (the run was killed while writing it) is dropped too; a malformed line before it is an error."""
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    kept, seen_train_row = [], False
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            s = int(row["step"])
        except (ValueError, KeyError, TypeError) as e:
            if n == len(lines) and not line.endswith("\n"):
                continue  # cut off mid-write
            raise ValueError(f"{path}:{n}: not a metrics row ({e}); fix or move the file to resume") from None
        if s < step or (s == step and not seen_train_row):
            kept.append(line if line.endswith("\n") else line + "\n")
            seen_train_row |= s == step and "loss" in row
    dropped = len([x for x in lines if x.strip()]) - len(kept)
    if dropped or (lines and not lines[-1].endswith("\n")):
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


class StepTimer:
    """Wall time minus the spans spent in ``paused()`` (evaluation, checkpoint saving): the time that step
    rates and the ETA divide by. ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self._start = clock()
        self._paused = 0.0

    @contextlib.contextmanager
    def paused(self):
        t0 = self.clock()
        try:
            yield
        finally:
            self._paused += self.clock() - t0

    def elapsed(self) -> float:
        """Step time since the timer started (seconds)."""
        return self.clock() - self._start - self._paused


class Progress:
    """A tqdm progress bar with steps/s, ETA, loss and tokens/s (process 0 only).

    Its rate is (steps done in this invocation) / ``timer.elapsed()``, so evaluation and checkpoint saving
    (run inside ``timer.paused()``) do not count; ``rate`` and ``eta_s`` hold the values shown.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, timer: StepTimer | None = None):
        self.total, self.initial = total, initial
        self.timer = timer or StepTimer()
        self.rate: float | None = None  # steps per second of step time
        self.eta_s: float | None = None
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm

            progress = self

            class _Bar(tqdm):
                @property
                def format_dict(self):
                    d = super().format_dict
                    if progress.rate is not None:
                        d["rate"] = progress.rate  # tqdm derives the ETA from it
                    return d

            self.bar = _Bar(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, step: int, info: dict[str, float]) -> None:
        elapsed = self.timer.elapsed()
        if step > self.initial and elapsed > 0:
            self.rate = (step - self.initial) / elapsed
            self.eta_s = (self.total - step) / self.rate
        if self.bar is None:
            return
        self.bar.n = step
        self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else v)
                              for k, v in info.items()}, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
