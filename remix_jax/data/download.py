"""Downloads the full training data of the configs from pinned upstream files, checked by sha256.

    python -m remix_jax.data --download=gsm8k,llm_adapters,code_alpaca --out=DIR

Every file is fetched from ``{base_url}/{repo}/{commit}/{path}`` (by default GitHub's raw file server at a
full commit hash, so the bytes cannot change), hashed while it streams into a temporary file beside its
destination, and renamed onto its final name only once its sha256 matches the pin: an interrupted or
corrupted download never leaves a partial file under the final name, and a good file already there is kept.
The layout under DIR is what the builders' ``manual_dir`` expects (``builders.py``):

    DIR/gsm8k/{train,test}.jsonl                                  manual_dir of ``gsm8k``
    DIR/llm_adapters/{ARC-Challenge,ARC-Easy,boolq,openbookqa}/{train,test}.json
                                                                  manual_dir of ``llm_adapters/*``
    DIR/code_alpaca/{code_alpaca_2k.json,new_codealpaca.json}     manual_dir of ``code_alpaca/{2k,full}``

with each upstream licence file beside the data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import pathlib
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from remix_jax.data.sources import DataError

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
_CHUNK = 1 << 20


class DownloadError(DataError):
    """A file could not be fetched (network, HTTP status, interrupted transfer) or failed its checksum."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One upstream file: where it goes under the dataset's folder, where it is upstream, its pinned bytes."""

    dest: str  # relative to the dataset's folder under DIR
    path: str  # relative to the repository root at the pinned commit
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A set of files from one repository at one commit, stored in one folder (a builder's manual_dir)."""

    name: str  # the --download name, also the folder under DIR
    repo: str  # owner/name on GitHub
    commit: str  # full 40-hex commit hash
    licence: str  # one line: the licence and what it allows
    licence_file: RemoteFile
    files: tuple[RemoteFile, ...]
    builders: tuple[str, ...]  # the project builders (name/config) whose manual_dir this folder is


def _llm_adapters_files() -> tuple[RemoteFile, ...]:
    pins = {  # folder -> (train sha256, train bytes, test sha256, test bytes)
        "ARC-Challenge": ("a9debff28aafed86a08211dc3584a3b6cb38edca8c56bb34cd5002ed54aeebfb", 585556,
                          "4a89ce368ae01a71d268d9851686738b2a0a1d84271116bab49a1dd2b48ecad7", 622510),
        "ARC-Easy": ("6a06cece3dec32f4fb1c1b0fc29dab14be7cf3053b417290dbc6cd845359f5ff", 1092324,
                     "3f32a84716ca6d57d38728bf80cc8117aecd17445c2cf29a68b571b810eb82dc", 1157216),
        "boolq": ("5ccbaceebaddc69765e1c4a363632196b81851d303696672165ab59ec4e48c83", 2599507,
                  "89df2397cbca81dc31adcc6f7f5b635821aa0565aafde46725b2b4bd39b4dfa9", 899151),
        "openbookqa": ("a1e094eeea01f70c0baa880f37497b26700ae99b243927b9c529984de9b1fe90", 1987446,
                       "8479930f7b8a26052c78250280b5465a4016ca7fc806af440d0f37e243f3099e", 202545),
    }
    return tuple(
        RemoteFile(f"{folder}/{split}.json", f"dataset/{folder}/{split}.json", sha, size)
        for folder, (tr_sha, tr_size, te_sha, te_size) in pins.items()
        for split, sha, size in (("train", tr_sha, tr_size), ("test", te_sha, te_size))
    )


DATASETS: dict[str, Dataset] = {
    "gsm8k": Dataset(
        name="gsm8k",
        repo="openai/grade-school-math",
        commit="3101c7d5072418e28b9008a6636bde82a006892c",
        licence="MIT (openai/grade-school-math LICENSE)",
        licence_file=RemoteFile("LICENSE", "LICENSE",
                                "86bbb73e855821d7c401912fd4bf82e34313e6e3b6fd6f909f2b6cc9e209a53b", 1062),
        files=(
            RemoteFile("train.jsonl", "grade_school_math/data/train.jsonl",
                       "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465", 4166206),
            RemoteFile("test.jsonl", "grade_school_math/data/test.jsonl",
                       "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14", 749738),
        ),
        builders=("gsm8k",),
    ),
    "llm_adapters": Dataset(
        name="llm_adapters",
        repo="AGI-Edgerunners/LLM-Adapters",
        commit="816657208af4db747803f87ba40a4c71383fed7a",
        licence="ODC-By (LLM-Adapters DATA_LICENSE, Open Data Commons Attribution License; the questions "
                "come from ARC, BoolQ and OpenBookQA, whose own terms also apply)",
        licence_file=RemoteFile("DATA_LICENSE", "DATA_LICENSE",
                                "d0661a893a508739e49514a80f7629633846f1f4ac889fcf638c94a15ff92e9c", 19790),
        files=_llm_adapters_files(),
        builders=("llm_adapters/arc_challenge", "llm_adapters/arc_easy", "llm_adapters/boolq",
                  "llm_adapters/openbookqa"),
    ),
    "code_alpaca": Dataset(
        name="code_alpaca",
        repo="sahil280114/codealpaca",
        commit="2f78ddc5c682ed6738ad092bbbfa59ba915afcb0",
        licence="CC BY-NC 4.0 (codealpaca DATA_LICENSE): non-commercial use only",
        licence_file=RemoteFile("DATA_LICENSE", "DATA_LICENSE",
                                "3711f963c05d0be80d53e5923308a6dee31b203da23435c9cfb7c7b6e4dd5e19", 19346),
        files=(
            RemoteFile("code_alpaca_2k.json", "data/code_alpaca_2k.json",
                       "9cb7352683bd2f530ce81eff7f8d58ccbe1a4bdf28afebbe9f80ec687256066d", 796189),
            RemoteFile("new_codealpaca.json", "data/new_codealpaca.json",
                       "2c8f4bb2dbce75ecc2020ded30f0fa935b7aa89d7be0c271f4ac208062f1bcb6", 3549564),
        ),
        builders=("code_alpaca/2k", "code_alpaca/full"),
    ),
}


def file_url(base_url: str, ds: Dataset, f: RemoteFile) -> str:
    return f"{base_url.rstrip('/')}/{ds.repo}/{ds.commit}/{f.path}"


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: pathlib.Path, sha256: str, size: int, *, timeout: float = 60.0) -> bool:
    """Download ``url`` to ``dest`` unless a file with the pinned sha256 is already there (then False).

    Streams into a temporary file in ``dest``'s folder and renames it onto ``dest`` only after its size
    and sha256 match; on any failure the temporary file is removed and ``dest`` is left as it was.
    """
    if dest.is_file() and dest.stat().st_size == size and sha256_of(dest) == sha256:
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h, got = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    announced = resp.headers.get("Content-Length")
                    for chunk in iter(lambda: resp.read(_CHUNK), b""):
                        h.update(chunk)
                        out.write(chunk)
                        got += len(chunk)
                # http.client ends a read early without an error when the server closes the connection
                if announced is not None and got < int(announced):
                    raise DownloadError(f"{url}: download interrupted after {got} of {announced} bytes")
            except urllib.error.HTTPError as e:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            except urllib.error.URLError as e:
                raise DownloadError(f"{url}: network error: {e.reason}") from None
            except http.client.IncompleteRead as e:
                raise DownloadError(f"{url}: download interrupted after {got + len(e.partial)} bytes") from None
            except (OSError, http.client.HTTPException) as e:  # reset connection, timeout, bad response
                kind = "timed out" if isinstance(e, socket.timeout) else f"{type(e).__name__}: {e}"
                raise DownloadError(f"{url}: download failed after {got} bytes ({kind})") from None
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if got != size or digest != sha256:
            raise DownloadError(f"{url}: checksum mismatch: got sha256 {digest} ({got} bytes), expected "
                                f"{sha256} ({size} bytes)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; give it an ordinary file's mode
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return True


def download(
    names: Sequence[str],
    out: str | os.PathLike,
    *,
    base_url: str = DEFAULT_BASE_URL,
    datasets: dict[str, Dataset] | None = None,
    log: Callable[[str], None] = print,
    timeout: float = 60.0,
) -> dict[str, pathlib.Path]:
    """Fetch the named datasets into ``out``; returns ``{name: folder}`` (each folder a builder's manual_dir).

    ``base_url`` replaces GitHub's raw file server (a mirror with the same ``repo/commit/path`` layout);
    ``datasets`` replaces the pinned table (tests). Raises ``DownloadError`` on the first failure.
    """
    table = DATASETS if datasets is None else datasets
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise DownloadError(f"unknown dataset(s) {unknown or list(names)}; known: {', '.join(table)}")
    out = pathlib.Path(out)
    folders = {}
    for name in dict.fromkeys(names):
        ds = table[name]
        folder = out / ds.name
        log(f"{ds.name}: {ds.repo}@{ds.commit} -> {folder}")
        for f in (*ds.files, ds.licence_file):
            fresh = fetch(file_url(base_url, ds, f), folder / f.dest, f.sha256, f.size, timeout=timeout)
            log(f"  {f.dest}: {f.size:,} bytes, sha256 ok{'' if fresh else ' (already present)'}")
        log(f"  licence: {ds.licence} ({folder / ds.licence_file.dest})")
        log(f"  manual_dir of {', '.join(ds.builders)}: {folder}")
        folders[name] = folder
    return folders
