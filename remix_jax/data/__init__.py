"""Data: TFDS builders and file readers, task formats, prompt templates with response-only loss masks, and a
resumable, sharded, packing loader.

Public API (see ``config.default_data_config`` for the ``config.data`` fields):
  default_data_config(), source_config(...)
  build_train_loader(data_cfg, tokenizer, *, process_index=0, process_count=1, global_batch_size=None)
      -> TrainLoader: ``next()`` gives {"tokens" [B,T] int32, "loss_mask" [B,T] float32, "segment_ids" [B,T]
      int32, "positions" [B,T] int32}; ``get_state()`` / ``set_state()`` checkpoint the position.
      loss_mask[t] = 1 iff tokens[t] is a response token (a target predicted from position t-1).
  build_eval_examples(data_cfg_or_source, ...) -> list of dicts with prompt / response / answer fields.
  render_prompt(tokenizer, prompt, template=..., ...) -> the text a model continues (for generation).
"""

from __future__ import annotations

import ml_collections

from remix_jax.data.data_config import default_data_config, source_config
from remix_jax.data.formats import Example
from remix_jax.data.loader import TrainLoader
from remix_jax.data.readers import ExampleSource, open_source
from remix_jax.data.sources import DataError
from remix_jax.data.templates import render_prompt, tokenize_example

__all__ = [
    "DataError",
    "Example",
    "ExampleSource",
    "TrainLoader",
    "build_eval_examples",
    "build_train_loader",
    "default_data_config",
    "open_source",
    "render_prompt",
    "source_config",
    "tokenize_example",
]


def _sorted_sources(data_cfg) -> list[tuple[str, ml_collections.ConfigDict]]:
    return sorted(data_cfg.sources.items())


def open_sources(data_cfg, *, split: str | None = None) -> list[ExampleSource]:
    """Every configured source, opened (TFDS datasets are prepared on first use)."""
    return [
        open_source(
            label,
            src,
            tfds_data_dir=data_cfg.tfds_data_dir,
            skip_malformed=data_cfg.skip_malformed,
            split=split,
        )
        for label, src in _sorted_sources(data_cfg)
    ]


def build_train_loader(
    data_cfg,
    tokenizer,
    *,
    process_index: int = 0,
    process_count: int = 1,
    global_batch_size: int | None = None,
) -> TrainLoader:
    """The training stream of this process: ``global_batch_size / process_count`` rows a batch."""
    gbs = int(global_batch_size or data_cfg.batch_size)
    if gbs % process_count:
        raise DataError(f"global batch size {gbs} is not divisible by process_count {process_count}")
    srcs = open_sources(data_cfg)
    weights = [float(src.weight) for _, src in _sorted_sources(data_cfg)]
    return TrainLoader(
        srcs,
        weights,
        tokenizer,
        batch_size=gbs // process_count,
        max_length=data_cfg.max_length,
        packing=data_cfg.packing,
        seed=data_cfg.seed,
        shuffle=data_cfg.shuffle,
        num_epochs=data_cfg.num_epochs,
        process_index=process_index,
        process_count=process_count,
        template=data_cfg.template,
        plain_format=data_cfg.plain_format,
        system_prompt=data_cfg.system_prompt,
        add_bos=data_cfg.add_bos,
    )


def build_eval_examples(
    source,
    *,
    split: str | None = None,
    tfds_data_dir: str = "",
    limit: int | None = None,
    label: str = "eval",
    skip_malformed: bool = False,
) -> list[dict]:
    """Raw evaluation examples of one source (a ``source_config``), in stored order.

    Each dict has ``id`` (index), ``source``, ``prompt`` (user text, no template), ``response`` (reference
    completion), ``answer`` (short reference, e.g. the GSM8K number or 'answer1'), plus task extras
    (HumanEval: ``task_id``, ``test``, ``entry_point``; instruction data: ``system``). Render the prompt for a
    model with ``render_prompt``.
    """
    src = open_source(label, source, tfds_data_dir=tfds_data_dir, skip_malformed=skip_malformed, split=split)
    n = src.size if limit is None else min(limit, src.size)
    out = []
    for i in range(n):
        ex = src.get(i)
        out.append(
            {
                "id": i,
                "source": label,
                "prompt": ex.prompt,
                "response": ex.response,
                "answer": ex.answer,
                **ex.extra,
            }
        )
    return out
