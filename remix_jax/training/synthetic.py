"""A synthetic instruction task for smoke runs and tests (no tokenizer, no files).

Each sequence is [BOS, p_1..p_n, SEP, r_1..r_n] with r_i = (p_{n+1-i} + 1) mod (V - 3) + 3 (the prompt
reversed and shifted): a response a LoRA can learn. Rows are right-padded; the loss mask covers the
response tokens. Batches are a pure function of (seed, batch index), so the loader state is the index. Process
p of P takes rows [p B, (p + 1) B) of the global batch of P B rows, so the global batch does not depend on P.
"""

from __future__ import annotations

import numpy as np

BOS, SEP = 1, 2


class SyntheticLoader:
    """Iterator of numpy batches {"tokens", "loss_mask", "segment_ids", "positions"} [B, T].

    ``batch_size`` is the per-process batch B; this process yields rows [process_index B, (process_index + 1) B)
    of the global batch of process_count B rows.
    """

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                 process_index: int = 0, min_len: int = 2, process_count: int = 1):
        if seq_len < 5:
            raise ValueError(f"synthetic data needs seq_len >= 5, got {seq_len}")
        if vocab_size < 8:
            raise ValueError(f"synthetic data needs vocab_size >= 8, got {vocab_size}")
        self.batch_size, self.seq_len, self.vocab_size = batch_size, seq_len, vocab_size
        if not 0 <= process_index < process_count:
            raise ValueError(f"synthetic data: process_index {process_index} not in [0, {process_count})")
        self.seed, self.process_index, self.process_count, self.min_len = seed, process_index, process_count, min_len
        self.position = 0

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, 0, self.position])  # the global batch (0: the one-process stream)
        self.position += 1
        b, t, v = self.batch_size, self.seq_len, self.vocab_size
        tokens = np.zeros((b, t), np.int32)
        mask = np.zeros((b, t), np.float32)
        seg = np.zeros((b, t), np.int32)
        max_n = (t - 2) // 2
        for g in range(self.process_count * b):
            n = int(rng.integers(min(self.min_len, max_n), max_n + 1))
            prompt = rng.integers(3, v, size=n)
            i = g - self.process_index * b
            if not 0 <= i < b:  # another process's row: drawn only to advance the stream
                continue
            resp = (prompt[::-1] + 1 - 3) % (v - 3) + 3
            row = np.concatenate([[BOS], prompt, [SEP], resp])
            tokens[i, :len(row)] = row
            seg[i, :len(row)] = 1
            mask[i, n + 2:len(row)] = 1.0
        pos = np.where(seg > 0, np.arange(t)[None, :], 0).astype(np.int32)
        return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}
