"""Models that leave JAX: PEFT adapters in and out, merged models, routed mixtures for transformers.

``python -m remix_jax.export`` writes a run as a PEFT adapter, a merged Hugging Face model or a remote-code
mixture (writer.py). The PEFT LoRA format itself, both ways, is ``remix_jax.adapters.peft_io`` (below training,
which reads it for ``adapter.init_from``), re-exported here. The formats are documented in docs/export.md.
"""

from remix_jax.adapters.peft_io import PeftFormatError, load_peft_adapter, save_peft_adapter

__all__ = ["PeftFormatError", "load_peft_adapter", "save_peft_adapter"]
