"""Paper Figure 5: ReMix accuracy against the number of routing samples M per input (the training compute
budget), n = 8, k = 2, r = 8, 3 seeds each. Runs with M > 8 process the samples 8 at a time
(``train.sample_chunk``: same gradients, the memory of 8 samples, one extra forward pass), so M = 32 fits where
all 32 samples at once would not.

    python -m remix_jax.sweep --sweep=experiments/m_sweep.py

With $REMIX_SELECTED_LR (the 0.5B study) every M trains at ReMix's chosen adapter learning rate and one routing
sample at a time, as in the main table (M = 4 is then the main table's ReMix; M = 32 costs 8 times its step: M = 4
trains at 2.24 steps/s alone on an H100, so M = 32 needs about 18 minutes for its 300 steps). Its runs with M > 4
save a checkpoint every 50 steps, so a run stopped by a job's time limit resumes where it stopped when the sweep is
started again (the checkpoints change nothing else).
"""

from common import GSM8K_CONFIG, GSM8K_TASK, ROUTED, SEEDS, as_in_main_table, small_scale, variant

from remix_jax.sweep import KEYS

MS = (2, 4, 8, 32)
CHUNK = 8  # routing samples processed at once when M exceeds it
RESUMABLE = {"train.checkpoint_every": 50}  # 0.5B study, M > 4: runs longer than a job's time limit


def get_sweep():
    main = as_in_main_table("remix")  # with $REMIX_SELECTED_LR: the chosen rate, and one sample at a time for every M
    variants = [{"name": f"M{m}", "labels": {KEYS.num_samples: m},
                 "overrides": {KEYS.num_samples: m, **({KEYS.sample_chunk: CHUNK} if m > CHUNK and not main else {}),
                               **(RESUMABLE if m > 4 and main else {})}}
                for m in MS]
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {**small_scale(), **ROUTED, **main},
        "grid": [variants],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": "ReMix on GSM8K against M", "rows": [KEYS.num_samples]}],
            "plots": [{"kind": "line", "x": KEYS.num_samples, "y": f"{GSM8K_TASK}/accuracy", "xlog": True,
                       "file": "accuracy_vs_M.png", "title": "ReMix: GSM8K accuracy vs M (paper Figure 5)",
                       "xlabel": "M (routing samples per input)"},
                      {"kind": "line", "x": KEYS.num_samples, "y": "heldout/heldout_loss", "xlog": True,
                       "file": "heldout_loss_vs_M.png", "title": "ReMix: GSM8K held-out loss vs M",
                       "xlabel": "M (routing samples per input)"}],
        },
    }
