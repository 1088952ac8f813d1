"""The run of tests/parallel/test_multiprocess.py: configs/smoke.py (ReMix, 4 experts of rank 4) on real data.

A model directory with a tokenizer and a gsm8k-format JSONL file are given on the command line
(``--config.model.path=DIR --config.data.sources.train.path=FILE``). Rows are read in file order
(``shuffle=False``), one example per row, so the test can write the file whose single-process stream is
the multi-process run's global batches.
"""

import importlib.util
import pathlib

from remix_jax.data import source_config


def get_config():
    spec = importlib.util.spec_from_file_location(
        "smoke_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    c = smoke.get_config("remix")
    c.model.path = ""
    c.data.synthetic = False
    c.data.sources.train = source_config("file", path="", fmt="gsm8k")
    c.data.shuffle = False
    c.data.plain_format = "{prompt}="
    c.data.batch_size = 8
    c.data.max_length = 16
    c.train.num_steps = 8
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.train.progress = False
    c.optimizer.warmup_steps = 0
    # Adapters, routers and their Adam moments are sharded over fsdp (across the processes) and tensor.
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 2
    return c
