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

Stale inputs: a prepared copy records the fingerprint of its source files and settings
(``fingerprint``; ``builder.info.metadata["inputs"]``). ``prepare`` reuses a copy only when the files it
would read now are the recorded ones (same path, size, mtime and ctime, or else the same sha256) with the
same settings. When a file was edited or replaced, or the fields or ``skip_malformed`` changed, the data is
prepared again, with a one-line warning naming the file and what changed, into
``<data_dir>/<name>/<config>/rebuilt/<digest>/<name>/<config>/<version>``; earlier copies are never
modified or deleted (another run may be reading them; delete them by hand when no run uses them). A
source file that no longer exists is an error. Read project datasets through ``prepare`` (or
``remix_jax.data``), not by name with ``tfds.data_source``, which does not check the inputs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from remix_jax.data import fingerprint, sources

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

    def __init__(
        self, *, files: dict | None = None, skip_malformed: bool = False, inputs: dict | None = None, **kwargs
    ):
        self._files = {k: str(v) for k, v in (files or {}).items()}
        self._skip_malformed = skip_malformed
        self._inputs = inputs  # the fingerprint of the files to prepare from, when the caller computed it
        super().__init__(**kwargs)

    def input_settings(self) -> dict:
        """The options that shape the stored records (part of the input fingerprint)."""
        cfg = self.builder_config
        return {
            "builder": f"{self.name}/{cfg.name}",
            "version": str(self.version),
            "fields": list(cfg.fields),
            "optional_fields": list(cfg.optional_fields),
            "rename": [list(r) for r in cfg.rename],
            "skip_malformed": bool(self._skip_malformed),
        }

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
        if self._files:
            return split_files(self.builder_config, files=self._files)
        try:
            manual = pathlib.Path(dl_manager.manual_dir)
        except AssertionError as e:  # tfds raises AssertionError when manual_dir is missing
            raise sources.DataError(f"{self.name}: {e}") from None
        return split_files(self.builder_config, manual_dir=manual)

    def _split_generators(self, dl_manager):
        files = self._split_files(dl_manager)
        for split, path in files.items():
            if not path.exists():
                raise sources.DataError(
                    f"{path}: no such file (split {split!r} of {self.name}/{self.builder_config.name})"
                )
        inputs = self._inputs
        if inputs is None or {s: r["path"] for s, r in inputs["files"].items()} != {
            s: str(p.absolute()) for s, p in files.items()
        }:
            inputs = fingerprint.make({s: fingerprint.file_record(p) for s, p in files.items()}, self.input_settings())
        self.info.metadata["inputs"] = inputs
        return {split: self._generate_examples(split, path) for split, path in files.items()}

    def _generate_examples(self, split: str, path: pathlib.Path):
        cfg = self.builder_config
        rows, skipped = sources.read_rows(path, skip_malformed=self._skip_malformed)
        recorded = self.info.metadata["inputs"]["files"][split]
        if not fingerprint.same_stat(recorded, fingerprint.stat_record(path)):
            raise sources.DataError(
                f"{path}: changed while {self.name}/{cfg.name} was being prepared "
                f"({fingerprint.describe_change(recorded, fingerprint.stat_record(path))}); prepare it again"
            )
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
    dataset folder; a copy prepared with other field names or files is not reused (``prepare`` prepares the
    data again).
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


def split_files(
    config: FilesConfig, *, manual_dir: str | os.PathLike | None = None, files: dict | None = None
) -> dict[str, pathlib.Path]:
    """{split: path} a builder with ``config`` reads: ``files`` if given, else the defaults in ``manual_dir``."""
    if files:
        return {split: pathlib.Path(p) for split, p in files.items()}
    return {split: pathlib.Path(manual_dir) / rel for split, rel in config.default_files}


def _prepared_copies(std: _FilesBuilder, make) -> list[fingerprint.Copy]:
    """Every prepared copy: the standard TFDS location ``std`` first, then ``rebuilt/*`` (oldest first)."""
    rebuilt = pathlib.Path(std.data_dir).parent / "rebuilt"
    roots = sorted(rebuilt.iterdir(), key=lambda d: d.stat().st_mtime_ns) if rebuilt.is_dir() else []
    copies = []
    for b in [std] + [make(r) for r in roots]:
        if b.is_prepared():
            skipped = sum(int(v) for v in b.info.metadata.get("skipped_rows", {}).values())
            copies.append(fingerprint.Copy(b.data_dir, b.info.metadata.get("inputs"), skipped, b))
    return copies


def prepare(
    name: str,
    *,
    data_dir: str | os.PathLike,
    manual_dir: str | os.PathLike | None = None,
    files: dict | None = None,
    config: FilesConfig | None = None,
    skip_malformed: bool = False,
) -> tfds.core.DatasetBuilder:
    """Prepares (when needed) and returns a project builder. ``name`` is ``builder`` or ``builder/config``.

    A prepared copy in ``data_dir`` is reused only when its recorded input files and settings are the
    current ones (see the module docstring); otherwise the data is prepared again into a fresh folder with a
    warning. Without ``manual_dir`` and ``files``, the files recorded by the newest copy are checked.
    Skipped-row counts are in ``builder.info.metadata["skipped_rows"]``, the fingerprint in
    ``builder.info.metadata["inputs"]``. Raises ``DataError`` when a source file does not exist.
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
    full = f"{builder_name}/{config.name}"

    def make(root, files=None, inputs=None):
        return cls(data_dir=str(root or data_dir), config=config, file_format="array_record",
                   files=files, skip_malformed=skip_malformed, inputs=inputs)

    std = make(None)
    copies = _prepared_copies(std, make)
    if files or manual_dir:
        if manual_dir and not files and not pathlib.Path(manual_dir).is_dir():
            raise sources.DataError(f"{manual_dir}: no such folder (manual_dir of {name})")
        wanted = split_files(config, manual_dir=manual_dir, files=files)
    else:
        recorded = [c for c in copies if c.inputs]
        if not recorded:
            why = "was prepared without a record of its input files" if copies else "is not prepared"
            raise sources.DataError(f"{name} {why} in {data_dir}: pass manual_dir or files")
        wanted = {s: pathlib.Path(r["path"]) for s, r in recorded[-1].inputs["files"].items()}
    for split, path in wanted.items():
        if not path.is_file():
            used = [c.where for c in copies if c.inputs and any(
                r["path"] == str(path.absolute()) for r in c.inputs["files"].values())]
            raise sources.DataError(
                f"{path}: no such file (split {split!r} of {full})"
                + (f"; the data prepared from it in {used[-1]} is not used without its source" if used else "")
            )
    settings = std.input_settings()
    stats = {s: fingerprint.stat_record(p) for s, p in wanted.items()}
    usable = [c for c in copies if c.usable(settings) and set(c.inputs["files"]) == set(stats)]
    for c in reversed(usable):  # unchanged path, size, mtime and ctime: reuse without reading the files
        if all(fingerprint.same_stat(c.inputs["files"][s], st) for s, st in stats.items()):
            return c.builder
    current = {s: fingerprint.file_record(p) for s, p in wanted.items()}
    for c in reversed(usable):  # same content (touched, copied or moved): reuse
        if all(c.inputs["files"][s]["sha256"] == r["sha256"] for s, r in current.items()):
            log.info("%s: %s: same content as recorded; reusing %s", full, ", ".join(map(str, wanted.values())),
                     c.where)
            return c.builder
    inputs = fingerprint.make(current, settings)
    root = None
    if copies:
        root = pathlib.Path(std.data_dir).parent / "rebuilt" / inputs["digest"][:16]
        log.warning("%s: %s; preparing it again into %s (earlier copies are left as they are)",
                    full, fingerprint.why_again(copies, current, settings), root)
    builder = make(root, files=wanted, inputs=inputs)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
    except OSError:  # another process finished the same preparation first: use its copy
        again = make(root)
        if not (again.is_prepared() and again.info.metadata.get("inputs", {}).get("digest") == inputs["digest"]):
            raise
        return again
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
