"""Inference-only code for the adapted decoder: what runs when nothing but the outputs is needed (deterministic
routing, no routing diagnostics, no gradients), never during training.

    generation.py     the decode loop: batched prompts, KV cache, prefill and a jitted while-loop of decode steps,
                      greedy or top-p sampling (the evaluator and ``python -m remix_jax.generate`` call it)
    prefill.py        the chunked prefill of a KV cache (generation's, and the evaluator's shared-context scoring)
    variables.py      the inference copies of the variables, built once per generate call (the fused kernels of
                      ``models.fused``, factors in the compute dtype, ReMix's precomputed matrices), and which of
                      them apply to a decoder's adapter config
    remix_ffn.py      ReMix's deterministic top-k FFN with few kernels: the one-matmul router + A front, the
                      precomputed four-matrix FFN, and ``precomputed_ffn``, the hook ``adapters.modules`` calls
    remix_kernels.py  the same FFN's routed halves as two Pallas (Triton) kernels for decode steps on GPUs

Imports flow one way: this package imports models, routing and parallel only (an adapter config is read through
its fields); adapters call its FFN paths, and evaluation and the entry points call the decode loop.
"""
