"""Inference-only speed code for the adapted decoder: what runs when nothing but the outputs is needed
(deterministic routing, no routing diagnostics, no gradients), never during training.

    remix_ffn.py      ReMix's deterministic top-k FFN with few kernels: the one-matmul router + A front, the
                      precomputed four-matrix FFN, and ``precomputed_ffn``, the hook ``adapters.modules`` calls
    remix_kernels.py  the same FFN's routed halves as two Pallas (Triton) kernels for decode steps on GPUs
    variables.py      the inference copies of the variables, built once per generate call (factors in the
                      compute dtype, ReMix's precomputed matrices), and which of them apply to an adapter config

Imports flow one way: this package imports models and routing only; adapters call into it, and generation
(``evaluation/generation.py``) prepares the variables with it.
"""
