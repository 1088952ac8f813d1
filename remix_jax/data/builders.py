"""TFDS dataset builders for the supported tasks, reading files the user points to and writing ArrayRecord.

Reading a prepared dataset needs no TensorFlow: ``tfds.data_source`` / ``builder.as_data_source()`` returns
a random-access ``ArrayRecordDataSource``. Building also runs without TensorFlow (tfds 4.9 writes
ArrayRecord with ``array_record``'s writer and uses its own example serializer).

Builders and their configs (``name/config``):

- ``gsm8k``: ``train.jsonl`` / ``test.jsonl`` with ``{"question", "answer"}`` (answer ends in ``#### N``).
- ``code_alpaca/2k`` (``code_alpaca_2k.json``) and ``code_alpaca/full`` (``new_codealpaca.json``): a JSON
  list of ``{"instruction", "input", "output"}``; split ``train``.
- ``llm_adapters/{arc_challenge,arc_easy,boolq,openbookqa}``: the LLM-Adapters commonsense format, a JSON
  list of ``{"instruction", "input", "output", "answer"}`` in ``<Task>/train.json`` and ``<Task>/test.json``.
- ``humaneval``: ``HumanEval.jsonl.gz`` (or ``.jsonl``) problems; split ``test``.
- ``instruction_jsonl/<name>``: any jsonl (or JSON list) with configurable field names, made with
  ``instruction_config(...)``.

Files come from a manual folder (``manual_dir``, holding the default file names above) or from explicit
``files={split: path}``. Every example also stores ``row``: its line number (jsonl) or element index (json)
in the source file, so a record can be traced back. Catalog datasets TFDS already knows (``ai2_arc``,
``super_glue/boolq``, ...) are read with ``tfds.data_source`` once the user has prepared them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from remix_jax.data import sources

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class FilesConfig(tfds.core.BuilderConfig):
    """A builder config naming the default file of each split (relative to the manual folder)."""

    default_files: tuple[tuple[str, str], ...] = ()
    fields: tuple[str, ...] = ()  # fields each row must have, stored as text
    optional_fields: tuple[str, ...] = ()  # stored as "" when absent
    rename: tuple[tuple[str, str], ...] = ()  # (stored name, name in the file) for instruction data


class _FilesBuilder(tfds.core.GeneratorBasedBuilder):
    """Common logic: locate the split files, read and validate rows, yield ``{field: text, "row": int}``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass manual_dir (a folder with the files) or files={split: path}."

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # tfds finds a builder's code through importlib_resources (not a tfds dependency): point at it.
        return epath.Path(__file__)

    def __init__(self, *, files: dict | None = None, skip_malformed: bool = False, **kwargs):
        self._files = {k: str(v) for k, v in (files or {}).items()}
        self._skip_malformed = skip_malformed
        super().__init__(**kwargs)

    def _stored_fields(self) -> list[str]:
        cfg = self.builder_config
        renamed = dict(cfg.rename)
        return [renamed.get(f, f) for f in cfg.fields] + [renamed.get(f, f) for f in cfg.optional_fields]

    def _info(self) -> tfds.core.DatasetInfo:
        feats = {k: tfds.features.Text() for k in self._stored_fields()}
        feats["row"] = np.int64
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.__doc__,
            features=tfds.features.FeaturesDict(feats),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_files(self, dl_manager) -> dict[str, pathlib.Path]:
        out = {}
        if self._files:
            return {split: pathlib.Path(p) for split, p in self._files.items()}
        try:
            manual = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds raises AssertionError when manual_dir is missing
            raise sources.DataError(f"{self.name}: {e}") from None
        for split, rel in self.builder_config.default_files:
            out[split] = manual / rel
        return out

    def _split_generators(self, dl_manager):
        files = self._split_files(dl_manager)
        for split, path in files.items():
            if not path.exists():
                raise sources.DataError(
                    f"{path}: no such file (split {split!r} of {self.name}/{self.builder_config.name})"
                )
        return {split: self._generate_examples(split, path) for split, path in files.items()}

    def _generate_examples(self, split: str, path: pathlib.Path):
        cfg = self.builder_config
        rows, skipped = sources.read_rows(path, skip_malformed=self._skip_malformed)
        kind = "element" if str(path).endswith(".json") else "line"
        rows, skipped_fields = sources.require_fields(
            rows, cfg.fields, path, skip_malformed=self._skip_malformed, line_kind=kind
        )
        skipped += skipped_fields
        if skipped:
            log.warning("%s: skipped %d malformed rows (skip_malformed=True)", path, skipped)
        self.info.metadata.setdefault("skipped_rows", {})[split] = skipped
        if not rows:
            raise sources.DataError(f"{path}: no valid rows ({skipped} skipped)")
        renamed = dict(cfg.rename)
        for n, row in rows:
            ex = {renamed.get(f, f): str(row[f]) for f in cfg.fields}
            for f in cfg.optional_fields:
                v = row.get(f)
                ex[renamed.get(f, f)] = "" if v is None else str(v)
            ex["row"] = n
            yield n, ex


class Gsm8k(_FilesBuilder):
    """GSM8K grade-school math word problems: question, worked answer ending in '#### N'."""

    BUILDER_CONFIGS = [
        FilesConfig(
            name="default",
            default_files=(("train", "train.jsonl"), ("test", "test.jsonl")),
            fields=("question", "answer"),
        )
    ]


class CodeAlpaca(_FilesBuilder):
    """CodeAlpaca instruction-following code data: instruction, input, output."""

    BUILDER_CONFIGS = [
        FilesConfig(
            name="2k",
            default_files=(("train", "code_alpaca_2k.json"),),
            fields=("instruction", "output"),
            optional_fields=("input",),
        ),
        FilesConfig(
            name="full",
            default_files=(("train", "new_codealpaca.json"),),
            fields=("instruction", "output"),
            optional_fields=("input",),
        ),
    ]


def _commonsense(name: str, folder: str) -> FilesConfig:
    return FilesConfig(
        name=name,
        default_files=(("train", f"{folder}/train.json"), ("test", f"{folder}/test.json")),
        fields=("instruction", "output", "answer"),
        optional_fields=("input",),
    )


class LlmAdapters(_FilesBuilder):
    """LLM-Adapters commonsense/science tasks: instruction, input, output ('the correct answer is X'),
    answer."""

    BUILDER_CONFIGS = [
        _commonsense("arc_challenge", "ARC-Challenge"),
        _commonsense("arc_easy", "ARC-Easy"),
        _commonsense("boolq", "boolq"),
        _commonsense("openbookqa", "openbookqa"),
    ]


class Humaneval(_FilesBuilder):
    """HumanEval code problems (evaluation): task_id, prompt, canonical_solution, test, entry_point."""

    BUILDER_CONFIGS = [
        FilesConfig(
            name="default",
            default_files=(("test", "HumanEval.jsonl.gz"),),
            fields=("task_id", "prompt", "canonical_solution", "test", "entry_point"),
        )
    ]


class InstructionJsonl(_FilesBuilder):
    """A user instruction dataset (jsonl or JSON list), stored as prompt / input / response / system."""

    BUILDER_CONFIGS = [
        FilesConfig(
            name="default",
            default_files=(("train", "train.jsonl"),),
            fields=("instruction", "output"),
            optional_fields=("input", "system"),
            rename=(("instruction", "prompt"), ("output", "response")),
        )
    ]


def instruction_config(
    name: str,
    *,
    prompt_field: str = "instruction",
    response_field: str = "output",
    input_field: str = "input",
    system_field: str = "system",
    train_file: str = "train.jsonl",
    test_file: str = "",
) -> FilesConfig:
    """A config for ``InstructionJsonl``: which fields hold prompt / input / response / system text.

    The stored fields are always ``prompt``, ``input``, ``response``, ``system``. ``name`` names the prepared
    dataset folder; change it when the field names or files change.
    """
    files = (("train", train_file),) + ((("test", test_file),) if test_file else ())
    return FilesConfig(
        name=name,
        description=f"fields {prompt_field}/{input_field}/{response_field}",
        default_files=files,
        fields=(prompt_field, response_field),
        optional_fields=(input_field, system_field),
        rename=(
            (prompt_field, "prompt"),
            (response_field, "response"),
            (input_field, "input"),
            (system_field, "system"),
        ),
    )


BUILDERS: dict[str, type[_FilesBuilder]] = {
    "gsm8k": Gsm8k,
    "code_alpaca": CodeAlpaca,
    "llm_adapters": LlmAdapters,
    "humaneval": Humaneval,
    "instruction_jsonl": InstructionJsonl,
}


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    files: dict | None = None,
    config: FilesConfig | None = None,
    skip_malformed: bool = False,
) -> tfds.core.DatasetBuilder:
    """Builds (once) and returns a project builder. ``name`` is ``builder`` or ``builder/config``.

    Already-prepared data in ``data_dir`` is reused as is. Skipped-row counts are in
    ``builder.info.metadata["skipped_rows"]``.
    """
    builder_name, _, config_name = name.partition("/")
    if builder_name not in BUILDERS:
        raise sources.DataError(f"unknown project dataset {builder_name!r}; known: {sorted(BUILDERS)}")
    cls = BUILDERS[builder_name]
    if config is None:
        names = [c.name for c in cls.BUILDER_CONFIGS]
        config_name = config_name or names[0]
        if config_name not in names:
            raise sources.DataError(f"{builder_name}: unknown config {config_name!r}; known: {names}")
        config = next(c for c in cls.BUILDER_CONFIGS if c.name == config_name)
    builder = cls(
        data_dir=str(data_dir),
        config=config,
        file_format="array_record",
        files=files,
        skip_malformed=skip_malformed,
    )
    if not builder.is_prepared():
        if not files and not manual_dir:
            raise sources.DataError(f"{name} is not prepared in {data_dir}: pass manual_dir or files")
        if manual_dir and not files and not pathlib.Path(manual_dir).is_dir():
            raise sources.DataError(f"{manual_dir}: no such folder (manual_dir of {name})")
        dl_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
        builder.download_and_prepare(download_config=dl_config)
    return builder


def decode(value):
    """TFDS returns text as bytes (and nested lists as arrays); make a record plain Python str/int/list."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: decode(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [decode(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [decode(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
