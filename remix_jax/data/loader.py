"""A deterministic, resumable, process-sharded loader of fixed-shape batches.

Why not grain: every example here is addressed by (source, epoch, position), so the whole stream is a pure
function of a few counters. The loader state is those counters (a small JSON dict), restoring it replays the
exact remaining stream (packing included, since a row is only closed by an example that is *not* consumed),
and there are no worker processes or pipeline buffers to checkpoint.

Stream of one process: draw ``k`` picks a source with probability proportional to its weight (a seeded uniform
per draw); the ``j``-th draw of source ``s`` is ``perm_{s,e}[p + P * (j mod n_p)]`` with epoch
``e = j // n_p``, ``perm_{s,e}`` a seeded permutation of that source, ``p``/``P`` the process index/count and
``n_p`` the size of this process's shard. So the processes' shards of an epoch partition the source.
"""

from __future__ import annotations

import logging

import numpy as np

from remix_jax.data import templates
from remix_jax.data.readers import ExampleSource
from remix_jax.data.sources import DataError

log = logging.getLogger(__name__)

STATE_VERSION = 1
_BLOCK = 1024  # uniforms per seeded block for source selection


class TrainLoader:
    """Iterator of batches ``{"tokens", "loss_mask", "segment_ids", "positions"}``, each ``[B, T]``.

    tokens int32 (padding = pad id); loss_mask float32, 1 where tokens[t] is a response token (a target);
    segment_ids int32, 0 = padding, 1.. = the examples of a row; positions int32, position within the segment.
    """

    def __init__(
        self,
        example_sources: list[ExampleSource],
        weights: list[float],
        tokenizer,
        *,
        batch_size: int,
        max_length: int,
        packing: bool = False,
        seed: int = 0,
        shuffle: bool = True,
        num_epochs: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        template: str = "plain",
        plain_format: str = templates.DEFAULT_PLAIN_FORMAT,
        system_prompt: str = "",
        add_bos: bool = False,
    ):
        if not example_sources:
            raise DataError("no data sources configured (data.sources is empty)")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        w = np.asarray(weights, np.float64)
        if w.shape != (len(example_sources),) or np.any(w < 0) or w.sum() <= 0:
            raise DataError(f"source weights must be non-negative with a positive sum, got {weights}")
        for s in example_sources:
            if s.size < process_count:
                raise DataError(
                    f"source {s.label!r} has {s.size} examples, fewer than {process_count} processes"
                )
        self.sources, self.weights, self.tokenizer = example_sources, w, tokenizer
        self.batch_size, self.max_length, self.packing = batch_size, max_length, packing
        self.seed, self.shuffle, self.num_epochs = seed, shuffle, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.template_kwargs = dict(template=template, plain_format=plain_format, add_bos=add_bos)
        self.system_prompt = system_prompt
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        self._token_cache: list[dict] = [{} for _ in example_sources]
        self._perm_cache: dict = {}
        self._uniform_cache: dict = {}
        self._draws = 0
        self._counts = [0] * len(example_sources)
        self.stats = {
            "examples": 0,
            "truncated": 0,
            "no_target_after_truncation": 0,
            "skipped_rows": {s.label: s.skipped for s in example_sources},
        }

    # ----- the stream as a function of the counters -----
    def shard_size(self, s: int) -> int:
        n, p, pc = self.sources[s].size, self.process_index, self.process_count
        return len(range(p, n, pc))

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._perm_cache:
            n = self.sources[s].size
            perm = (
                np.random.default_rng([self.seed, s, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
            self._perm_cache = {k: v for k, v in self._perm_cache.items() if k[0] != s}  # keep one per source
            self._perm_cache[key] = perm
        return self._perm_cache[key]

    def _uniform(self, k: int) -> float:
        block = k // _BLOCK
        if block not in self._uniform_cache:
            self._uniform_cache = {
                block: np.random.default_rng([self.seed, 7919, self.process_index, block]).random(_BLOCK)
            }
        return float(self._uniform_cache[block][k % _BLOCK])

    def _exhausted(self, s: int) -> bool:
        return self.num_epochs > 0 and self._counts[s] >= self.num_epochs * self.shard_size(s)

    def _peek(self) -> tuple[int, int] | None:
        """(source, example index) of the next draw, or None when every source is exhausted."""
        active = np.array([0.0 if self._exhausted(s) else self.weights[s] for s in range(len(self.sources))])
        if active.sum() <= 0:
            return None
        s = 0
        if len(self.sources) > 1:
            cum = np.cumsum(active) / active.sum()
            s = int(
                min(np.searchsorted(cum, self._uniform(self._draws), side="right"), len(self.sources) - 1)
            )
            while active[s] <= 0:  # rounding at the top edge
                s -= 1
        j = self._counts[s]
        n_p = self.shard_size(s)
        epoch, pos = divmod(j, n_p)
        return s, int(self._perm(s, epoch)[self.process_index + self.process_count * pos])

    def _consume(self, s: int, i: int, *, truncated: bool = False) -> None:
        self._draws += 1
        self._counts[s] += 1
        self.stats["examples"] += 1
        if truncated:
            n = self.stats["truncated"] = self.stats["truncated"] + 1
            if not self._truncated(s, i)[1].any():
                self.stats["no_target_after_truncation"] += 1
            if n & (n - 1) == 0:  # log at 1, 2, 4, 8, ... truncations
                log.warning(
                    "truncated %d examples to max_length=%d so far (latest: source %s example %d, "
                    "%d tokens); %d of them lost every response token",
                    n,
                    self.max_length,
                    self.sources[s].label,
                    i,
                    len(self.tokenized(s, i)[0]),
                    self.stats["no_target_after_truncation"],
                )

    def tokenized(self, s: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) of example i of source s, before truncation (cached)."""
        cache = self._token_cache[s]
        if i not in cache:
            ex = self.sources[s].get(i)
            system = ex.extra.get("system") or self.system_prompt
            cache[i] = templates.tokenize_example(
                self.tokenizer, ex.prompt, ex.response, system=system, **self.template_kwargs
            )
        return cache[i]

    def _truncated(self, s: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        ids, mask = self.tokenized(s, i)
        return ids[: self.max_length], mask[: self.max_length]

    # ----- batches -----
    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        B, T = self.batch_size, self.max_length
        tokens = np.full((B, T), self.pad_id, np.int32)
        mask = np.zeros((B, T), np.float32)
        seg = np.zeros((B, T), np.int32)
        pos = np.zeros((B, T), np.int32)
        fill, n_seg = np.zeros(B, np.int64), np.zeros(B, np.int64)
        any_example = False
        while True:
            nxt = self._peek()
            if nxt is None:
                break
            ids, m = self._truncated(*nxt)
            L = len(ids)
            # packing: first row with room (first-fit, in stream order); else one example per row
            room = np.flatnonzero(fill + L <= T) if self.packing else np.flatnonzero(n_seg == 0)
            if not len(room):
                break  # not consumed: it opens the next batch
            b = int(room[0])
            self._consume(*nxt, truncated=len(self.tokenized(*nxt)[0]) > L)
            f = int(fill[b])
            n_seg[b] += 1
            tokens[b, f : f + L], mask[b, f : f + L] = ids, m
            seg[b, f : f + L], pos[b, f : f + L] = n_seg[b], np.arange(L)
            fill[b] += L
            any_example = True
        if not any_example:
            raise StopIteration
        return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}

    # ----- checkpointing -----
    def _identity(self) -> dict:
        return {
            "sources": [[s.label, s.size] for s in self.sources],
            "seed": self.seed,
            "process_index": self.process_index,
            "process_count": self.process_count,
            "packing": self.packing,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
        }

    def get_state(self) -> dict:
        """JSON-serialisable position in the stream (plus the settings it is only valid for)."""
        return {
            "version": STATE_VERSION,
            "draws": self._draws,
            "counts": list(self._counts),
            "stats": {k: v for k, v in self.stats.items() if k != "skipped_rows"},
            **self._identity(),
        }

    def set_state(self, state: dict) -> None:
        """Restore a ``get_state()``; the remaining stream is then identical to the saved run's."""
        if state.get("version") != STATE_VERSION:
            raise DataError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if _norm(state.get(k)) != _norm(v)}
        if diff:
            raise DataError(f"loader state was saved with different settings (saved, now): {diff}")
        self._draws, self._counts = int(state["draws"]), [int(c) for c in state["counts"]]
        self.stats.update(state.get("stats", {}))


def _norm(v):
    return [_norm(x) for x in v] if isinstance(v, (list, tuple)) else v
