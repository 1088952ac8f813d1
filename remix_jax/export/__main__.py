"""Export a run's adapters (or a base model) for tools outside JAX.

    python -m remix_jax.export --run=WORKDIR --format=peft|merged|hf-mixture|hf --out=DIR
        [--dtype=float32|bfloat16] [--model=PATH] [--base_name=NAME]
    python -m remix_jax.export --model=PATH --format=hf --out=DIR

peft: a PEFT LoRA adapter (lora, rslora, dora runs) for ``peft.PeftModel.from_pretrained`` on the base exported
with --format=hf; merged: the adapter folded into the base (plain transformers); hf-mixture: a routed mixture
(remix, mixlora, hydralora runs) for transformers with trust_remote_code=True; hf: the base model alone.
--model overrides the base model path the run recorded (or names the model for --format=hf without a run);
--base_name is written as the PEFT adapter's base_model_name_or_path. See docs/export.md.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined only when run as a program, so other modules and tests may import this one."""
    from remix_jax.export.writer import DTYPES, FORMATS

    flags.DEFINE_string("run", None, "Run folder (python -m remix_jax.main --workdir=...).")
    flags.DEFINE_enum("format", None, list(FORMATS), "What to write.", required=True)
    flags.DEFINE_string("out", None, "Output folder (must not exist yet).", required=True)
    flags.DEFINE_enum("dtype", "float32", list(DTYPES), "Dtype of the base weights (merged, hf-mixture, hf).")
    flags.DEFINE_string("model", None, "Base model path (HF directory or .gguf): overrides the run's.")
    flags.DEFINE_string("base_name", None, "base_model_name_or_path of a PEFT export.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    from remix_jax.adapters.adapter_config import AdapterConfigError
    from remix_jax.adapters.peft_io import PeftFormatError
    from remix_jax.export.runs import RunLoadError
    from remix_jax.export.writer import ExportError, export_base, export_run
    from remix_jax.models.model_config import ModelLoadError

    if FLAGS.run is None and (FLAGS.format != "hf" or FLAGS.model is None):
        raise app.UsageError("--run=WORKDIR is required (or --model=PATH with --format=hf)")
    try:
        if FLAGS.run is None:
            out = export_base(FLAGS.model, FLAGS.out, FLAGS.dtype)
        else:
            out = export_run(FLAGS.run, FLAGS.format, FLAGS.out, FLAGS.dtype, FLAGS.model, FLAGS.base_name)
    except (ExportError, RunLoadError, PeftFormatError, ModelLoadError, AdapterConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
