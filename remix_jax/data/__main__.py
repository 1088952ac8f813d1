"""Prepare or inspect the data of a config, or download the full training data.

    python -m remix_jax.data --config=configs/gsm8k.py:remix_small:DATA/gsm8k --show=5
        [--config.data.max_length=256] [--split=test]
        [--tokenizer=path/to/model.gguf | path/to/tokenizer_folder]

Prepares every TFDS source of ``config.data`` (once), prints ``--show`` formatted examples with the masked
(prompt) part in brackets ``[[...]]`` and the trained response plain, then token-length statistics of each
source and the fraction of examples longer than ``max_length``. The tokenizer is ``--tokenizer``, else
``config.data.tokenizer``, else the one ``config.model.path`` holds (a GGUF file or a model folder with
tokenizer.json: the tokenizer training uses); the command asks for one only when none of these has it.

    python -m remix_jax.data --download=gsm8k,llm_adapters,code_alpaca --out=DATA [--base_url=URL]

Fetches the pinned upstream files into DATA/<name>/ (the builders' manual_dir layout), checks their sha256
and prints each dataset's licence (``download.py``).

    python -m remix_jax.data --carve=DATA/gsm8k/train.jsonl --num_val=500 [--carve_seed=0] --out=DIR

Holds ``--num_val`` rows of a training file out as DIR/validation.jsonl, the rest as DIR/train.jsonl, with
DIR/carve.json recording the source's sha256 and the held-out rows (``carve.py``): the validation split on
which learning rates are chosen, never the test set.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
from absl import app, flags
from ml_collections import config_flags

import remix_jax.data as data
from remix_jax.data import carve as carve_lib
from remix_jax.data import download as download_lib
from remix_jax.data import templates

_FLAGS: dict = {}  # defined only when run as a program, so other modules and tests may import this one


def _define_flags() -> None:
    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", None, "Config file with a `data` section.", lock_config=True)
    _FLAGS["show"] = flags.DEFINE_integer("show", 5, "How many formatted examples to print per source.")
    _FLAGS["tokenizer"] = flags.DEFINE_string(
        "tokenizer", "",
        "Tokenizer path (GGUF file or tokenizer folder); default: config.data.tokenizer, else model.path's own.")
    _FLAGS["split"] = flags.DEFINE_string("split", "", "Split to inspect (default: each source's split).")
    _FLAGS["stats_limit"] = flags.DEFINE_integer(
        "stats_limit", 0, "Tokenize at most this many examples per source (0 = all).")
    _FLAGS["download"] = flags.DEFINE_list(
        "download", [], f"Datasets to download instead: any of {','.join(download_lib.DATASETS)}.")
    _FLAGS["out"] = flags.DEFINE_string("out", "", "Output folder (with --download or --carve).")
    _FLAGS["carve"] = flags.DEFINE_string("carve", "", "A training file to carve a validation split from.")
    _FLAGS["num_val"] = flags.DEFINE_integer("num_val", 500, "Rows held out as validation (with --carve).")
    _FLAGS["carve_seed"] = flags.DEFINE_integer("carve_seed", 0, "Seed of the held-out draw (with --carve).")
    _FLAGS["base_url"] = flags.DEFINE_string(
        "base_url", download_lib.DEFAULT_BASE_URL, "Server holding {repo}/{commit}/{path} (a mirror).")


def load_tokenizer(path: str):
    """A GGUF file or a Hugging Face tokenizer folder, through the model package's loader."""
    from remix_jax.models.tokenizer import load_tokenizer as load

    if not pathlib.Path(path).exists():
        raise data.DataError(f"{path}: tokenizer path does not exist")
    return load(path)


def config_tokenizer(cfg, flag: str = ""):
    """The tokenizer of the inspection: ``flag``, else ``cfg.data.tokenizer``, else ``cfg.model.path``'s own.

    Raises ``app.UsageError`` (asking for ``--tokenizer``) only when none is set and the model holds none.
    """
    path = flag or cfg.data.get("tokenizer", "")
    if path:
        return load_tokenizer(path)
    model_path = cfg.model.get("path", "") if "model" in cfg else ""
    if not model_path or model_path.startswith("random:"):
        why = f"model.path={model_path!r} holds no tokenizer" if model_path else "the config names no model"
        raise app.UsageError(f"no tokenizer: {why}; pass --tokenizer or set config.data.tokenizer")
    from remix_jax.models.model_config import ModelLoadError

    try:
        return load_tokenizer(model_path)
    except (ModelLoadError, data.DataError) as e:
        raise app.UsageError(
            f"no tokenizer in model.path: {e}; pass --tokenizer or set config.data.tokenizer") from None


def marked(tokenizer, ids: np.ndarray, mask: np.ndarray) -> str:
    """The example's text with its masked (not trained) spans wrapped in [[...]]."""
    out, start = [], 0
    for t in range(1, len(ids) + 1):
        if t == len(ids) or mask[t] != mask[start]:
            text = tokenizer.decode(ids[start:t].tolist(), skip_special_tokens=False)
            out.append(text if mask[start] else f"[[{text}]]")
            start = t
    return "".join(out)


def length_stats(lengths: np.ndarray, max_length: int) -> str:
    q = np.percentile(lengths, [50, 90, 99]).astype(int)
    return (
        f"n={len(lengths)} mean={lengths.mean():.1f} p50={q[0]} p90={q[1]} p99={q[2]} max={lengths.max()} "
        f"over max_length={max_length}: {(lengths > max_length).sum()} ({(lengths > max_length).mean():.2%})"
    )


def inspect(data_cfg, tokenizer, *, show: int, split: str | None = None, stats_limit: int = 0) -> str:
    """The report printed by the command (a pure function of the config and tokenizer, for tests)."""
    lines = []
    kw = dict(template=data_cfg.template, plain_format=data_cfg.plain_format, add_bos=data_cfg.add_bos)
    for src in data.open_sources(data_cfg, split=split):
        lines.append(
            f"== source {src.label}: {src.size} examples"
            + (f" ({src.skipped} malformed rows skipped)" if src.skipped else "")
        )
        n = src.size if not stats_limit else min(stats_limit, src.size)
        lengths, resp = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for i in range(n):
            ex = src.get(i)
            ids, mask = templates.tokenize_example(
                tokenizer,
                ex.prompt,
                ex.response,
                system=ex.extra.get("system") or data_cfg.system_prompt,
                **kw,
            )
            lengths[i], resp[i] = len(ids), int(mask.sum())
            if i < show:
                lines.append(
                    f"-- example {i} ({len(ids)} tokens, {int(mask.sum())} trained)\n"
                    f"{marked(tokenizer, ids, mask)}"
                )
        lines.append(f"tokens per example: {length_stats(lengths, data_cfg.max_length)}")
        lines.append(f"response tokens per example: mean={resp.mean():.1f} max={resp.max()}")
    return "\n".join(lines)


def run_download(names, out: str, base_url: str) -> None:
    """``--download``: one line on stderr and exit status 1 on a network error or a checksum mismatch."""
    if not out:
        raise app.UsageError("--download needs --out=DIR (the folder the datasets go to)")
    try:
        download_lib.download(names, out, base_url=base_url)
    except download_lib.DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def run_carve(src: str, out: str, num_val: int, seed: int) -> None:
    """``--carve``: one line on stderr and exit status 1 on a bad file or an occupied folder."""
    if not out:
        raise app.UsageError("--carve needs --out=DIR (the folder the two splits go to)")
    try:
        m = carve_lib.carve(src, out, num_val, seed)
    except carve_lib.CarveError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"{out}: {m['num_train']} training rows in {carve_lib.TRAIN}, {m['num_validation']} in "
          f"{carve_lib.VALIDATION} (seed {seed}; source sha256 {m['source']['sha256'][:12]})")


def main(argv):
    del argv
    if _FLAGS["carve"].value:
        return run_carve(_FLAGS["carve"].value, _FLAGS["out"].value, _FLAGS["num_val"].value,
                         _FLAGS["carve_seed"].value)
    if _FLAGS["download"].value:
        return run_download(_FLAGS["download"].value, _FLAGS["out"].value, _FLAGS["base_url"].value)
    cfg = _FLAGS["config"].value
    if cfg is None or "data" not in cfg:
        raise app.UsageError("--config must name a config file with a `data` section (or pass --download)")
    print(
        inspect(
            cfg.data,
            config_tokenizer(cfg, _FLAGS["tokenizer"].value),
            show=_FLAGS["show"].value,
            split=_FLAGS["split"].value or None,
            stats_limit=_FLAGS["stats_limit"].value,
        )
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
