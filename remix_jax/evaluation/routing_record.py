"""Routing statistics of an evaluation's scoring passes: per-block means over batches, weighted by each batch's
tokens (``RoutingAccumulator``), as ``eval/<task>.json`` records them under ``routing_stats``."""

from __future__ import annotations

from typing import Any

import numpy as np

from remix_jax.evaluation.scoring import ROUTING_KEYS


class RoutingAccumulator:
    """Token-weighted mean of per-block routing statistics over scoring batches; the expert load also over the
    even- and the odd-numbered batches apart (``part``), two disjoint sets of the task's questions, so that a
    reader can see how much the load varies between samples of one task (experiments/specialisation.py)."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.tokens = 0
        self.half_loads: list[np.ndarray | None] = [None, None]
        self.half_tokens = [0, 0]

    def add(self, stats: dict, num_tokens: int, part: int = 0) -> None:
        """One batch's statistics (means over its ``num_tokens`` tokens); ``part``: the batch's number, whose
        parity picks the half its load joins."""
        if not stats or num_tokens == 0:
            return
        for k in ROUTING_KEYS:
            if k in stats:
                v = np.asarray(stats[k], np.float64) * num_tokens
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.tokens += int(num_tokens)
        if "load" in stats:
            h = part % 2
            v = np.asarray(stats["load"], np.float64) * num_tokens
            self.half_loads[h] = v if self.half_loads[h] is None else self.half_loads[h] + v
            self.half_tokens[h] += int(num_tokens)

    def result(self) -> dict | None:
        """{"num_tokens", "ess_applied" [L], "ess_softmax" [L], "entropy" [L], "load" [L][n],
        "distinct_subsets" [L] (mean per batch), "ess_applied_mean"}, plus "load_halves" [2][L][n] and
        "num_tokens_halves" [2] (the load over the even- and the odd-numbered batches) when both halves have
        tokens; None when nothing routed."""
        if not self.sums:
            return None
        out: dict[str, Any] = {"num_tokens": self.tokens}
        for k, v in self.sums.items():
            out[k] = (v / self.tokens).tolist()
        if "ess_applied" in out:
            out["ess_applied_mean"] = float(np.mean(out["ess_applied"]))
        if all(self.half_tokens):
            out["load_halves"] = [(v / n).tolist() for v, n in zip(self.half_loads, self.half_tokens, strict=True)]
            out["num_tokens_halves"] = list(self.half_tokens)
        return out
