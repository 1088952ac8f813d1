"""Training entry point.

    python -m remix_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.key=value ...]

The config file's ``get_config(variant)`` returns a ConfigDict (see remix_jax/config.py for the schema);
it is locked, so overriding a key that does not exist fails. The config is validated before any model is
loaded or compiled. Rerunning the same command resumes from the newest checkpoint in DIR.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:VARIANT]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder: checkpoints, metrics.jsonl, export/.")


def run(config, workdir: str) -> dict:
    """Validate, then train; returns the loop's summary."""
    import jax

    from remix_jax.config import validate_config
    from remix_jax.parallel.mesh import maybe_initialize_distributed
    from remix_jax.training.loop import train

    maybe_initialize_distributed()
    validate_config(config, num_devices=len(jax.devices()))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    return train(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    from remix_jax.config import ConfigError

    if not flags.FLAGS["verbosity"].present:  # keep checkpointing's per-file INFO lines out of the console
        logging.set_verbosity(logging.WARNING)
    if _CONFIG.value is None:
        raise app.UsageError("--config=configs/NAME.py[:VARIANT] is required")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir=DIR is required")
    try:
        summary = run(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        sys.exit(2)
    last = {k: v for k, v in summary.get("metrics", {}).items() if not isinstance(v, list)}
    print(json.dumps({"step": summary["step"], "export": summary.get("export"), "last": last}, default=str))


if __name__ == "__main__":
    app.run(main)
