"""A synthetic instruction task for smoke runs and tests (no tokenizer, no files).

Each sequence is [BOS, p_1..p_n, SEP, r_1..r_n] with r_i = (p_{n+1-i} + 1) mod (V - 3) + 3 (the prompt
reversed and shifted): a response a LoRA can learn. Rows are right-padded; the loss mask covers the
response tokens. Batches are a pure function of (seed, batch index), so the loader state is the index.
"""

from __future__ import annotations

import numpy as np

BOS, SEP = 1, 2


class SyntheticLoader:
    """Iterator of numpy batches {"tokens", "loss_mask", "segment_ids", "positions"} [B, T].

    ``batch_size`` is the per-process batch; ``process_index`` decorrelates processes.
    """

    def __init__(self, batch_size: int, seq_len: int, vocab_size: int, seed: int = 0,
                 process_index: int = 0, min_len: int = 2):
        if seq_len < 5:
            raise ValueError(f"synthetic data needs seq_len >= 5, got {seq_len}")
        if vocab_size < 8:
            raise ValueError(f"synthetic data needs vocab_size >= 8, got {vocab_size}")
        self.batch_size, self.seq_len, self.vocab_size = batch_size, seq_len, vocab_size
        self.seed, self.process_index, self.min_len = seed, process_index, min_len
        self.position = 0

    def get_state(self) -> dict:
        return {"position": self.position}

    def set_state(self, state: dict) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.process_index, self.position])
        self.position += 1
        b, t, v = self.batch_size, self.seq_len, self.vocab_size
        tokens = np.zeros((b, t), np.int32)
        mask = np.zeros((b, t), np.float32)
        seg = np.zeros((b, t), np.int32)
        max_n = (t - 2) // 2
        for i in range(b):
            n = int(rng.integers(min(self.min_len, max_n), max_n + 1))
            prompt = rng.integers(3, v, size=n)
            resp = (prompt[::-1] + 1 - 3) % (v - 3) + 3
            row = np.concatenate([[BOS], prompt, [SEP], resp])
            tokens[i, :len(row)] = row
            seg[i, :len(row)] = 1
            mask[i, n + 2:len(row)] = 1.0
        pos = np.where(seg > 0, np.arange(t)[None, :], 0).astype(np.int32)
        return {"tokens": tokens, "loss_mask": mask, "segment_ids": seg, "positions": pos}
