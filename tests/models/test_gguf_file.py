"""remix_jax.models.gguf_file against the gguf package's own reader, and its errors on damaged files.

``gguf.GGUFReader`` is the reference: every metadata value (and its Python type) and every tensor (name, type,
GGUF-order shape, byte count, offset, the data array's dtype, shape and bytes) must be the same, on the real
SmolLM2 file and on files written here with every metadata value type, quantised and element-wise tensors, a
non-default alignment and the other byte order. Damaged files are built byte by byte.
"""

import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as QT  # noqa: E402

from remix_jax.models.gguf_file import GGUFFile, read_gguf  # noqa: E402
from remix_jax.models.gguf_io import load_gguf  # noqa: E402
from remix_jax.models.model_config import ModelLoadError  # noqa: E402


def _assert_same_as_reference(path):
    ours = read_gguf(path)
    ref = gguf.GGUFReader(str(path))
    ref_fields = {k: f.contents() for k, f in ref.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.fields) == list(ref_fields)
    for key, want in ref_fields.items():
        got = ours.fields[key]
        assert got == want, key
        assert type(got) is type(want), key
        if isinstance(want, list) and want:
            assert [type(x) for x in got] == [type(x) for x in want], key
    assert ours.version == int(ref.fields["GGUF.version"].contents())
    assert (ours.alignment, ours.data_offset) == (int(ref.alignment), int(ref.data_offset))
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ours.tensors, ref.tensors, strict=True):
        assert a.tensor_type == b.tensor_type, a.name
        assert a.shape.tolist() == b.shape.tolist(), a.name
        assert (a.n_elements, a.n_bytes, a.data_offset) == (b.n_elements, b.n_bytes, b.data_offset), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape, a.name
        assert np.array_equal(a.data, b.data, equal_nan=True), a.name
    return ours


def test_real_smollm2_file_reads_as_the_gguf_package_reads_it(smollm2_gguf):
    f = _assert_same_as_reference(smollm2_gguf)
    assert len(f.fields["tokenizer.ggml.tokens"]) == 49152
    assert len(f.tensors) == 272


def _write_every_type(path, endianess=gguf.GGUFEndian.LITTLE, alignment=None):
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama", endianess=endianess)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.true", True)
    w.add_bool("t.false", False)
    w.add_string("t.str", "héllo wörld ✓")
    w.add_string("t.empty", "")
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    w.add_array("t.strs", ["a", "", "ü b", "Ġthe"])
    w.add_array("t.bools", [True, False, True])
    w.add_array("t.none", [])
    w.add_tensor("f32", rng.normal(size=(3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.normal(size=(4, 8)).astype(np.float16))
    w.add_tensor("i32", np.arange(6, dtype=np.int32))
    w.add_tensor("q8", gguf.quants.quantize(rng.normal(size=(2, 64)).astype(np.float32), QT.Q8_0), raw_dtype=QT.Q8_0)
    w.add_tensor("q4k", rng.integers(0, 256, (2, 144), dtype=np.uint8), raw_dtype=QT.Q4_K)
    w.add_tensor("scalar_like", np.array([3.0], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [None, 64])
def test_every_value_type_and_tensor_kind_reads_as_the_reference(tmp_path, alignment):
    f = _assert_same_as_reference(_write_every_type(tmp_path / "t.gguf", alignment=alignment))
    assert f.fields["t.str"] == "héllo wörld ✓" and f.fields["t.u64"] == 2**63 + 5
    assert f.alignment == (alignment or 32) and f.data_offset % f.alignment == 0
    q4k = {t.name: t for t in f.tensors}["q4k"]
    assert q4k.shape.tolist() == [256, 2] and q4k.data.shape == (2, 144)


def test_byte_swapped_file_goes_through_the_gguf_reader(tmp_path):
    path = _write_every_type(tmp_path / "be.gguf", endianess=gguf.GGUFEndian.BIG)
    assert GGUFFile.byte_swapped(path)
    _assert_same_as_reference(path)


# ---------------------------------------------------------------------------------------------------
# Damaged files, built byte by byte.


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _file(tmp_path, kv: bytes = b"", n_kv: int = 0, tensors: bytes = b"", n_tensors: int = 0,
          data: bytes = b"", version: int = 3, magic: bytes = b"GGUF", pad_to: int = 32):
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + kv + tensors
    head += b"\0" * (-len(head) % pad_to)
    path = tmp_path / "bad.gguf"
    path.write_bytes(head + data)
    return path


def _tensor_info(name: str, dims, qtype: int, offset: int = 0) -> bytes:
    dims_bytes = struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
    return _s(name) + dims_bytes + struct.pack("<IQ", qtype, offset)


def test_hand_built_file_is_what_the_reference_reads(tmp_path):
    kv = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")
    kv += _s("a.list") + struct.pack("<IIQ", 9, 4, 2) + struct.pack("<II", 7, 9)
    path = _file(tmp_path, kv, 2, _tensor_info("w", [4], int(QT.F32)), 1, np.arange(4, dtype="<f4").tobytes())
    f = _assert_same_as_reference(path)
    assert f.fields == {"general.architecture": "llama", "a.list": [7, 9]}
    assert f.tensors[0].data.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("damage, message", [
    ("magic", "not a GGUF file"),
    ("version", "GGUF version 1 is not supported"),
    ("short_header", "fewer than a GGUF header"),
    ("cut_in_metadata", "truncated: metadata 'general.architecture'"),
    ("cut_in_key_count", "truncated: metadata key #1"),
    ("duplicate_key", "metadata key 'general.architecture' appears twice"),
    ("unknown_value_type", "unknown GGUF value type 99"),
    ("bad_utf8", "is not UTF-8"),
    ("bad_alignment", "general.alignment=48 is not a power of two"),
    ("unknown_tensor_type", "tensor 'w' has unknown ggml type 200"),
    ("duplicate_tensor", "tensor 'w' appears twice"),
    ("cut_in_tensor_data", "truncated: tensor 'w' (16 bytes"),
])
def test_damaged_files_say_what_and_where(tmp_path, damage, message):
    arch = _s("general.architecture") + struct.pack("<I", 8) + _s("llama")
    w = _tensor_info("w", [4], int(QT.F32))
    data = np.arange(4, dtype="<f4").tobytes()
    kw = dict(kv=arch, n_kv=1, tensors=w, n_tensors=1, data=data)
    if damage == "magic":
        kw["magic"] = b"GGUX"
    elif damage == "version":
        kw["version"] = 1
    elif damage == "cut_in_metadata":
        path = _file(tmp_path, **kw)
        path.write_bytes(path.read_bytes()[:24 + 8 + 20 + 4 + 3])
    elif damage == "cut_in_key_count":
        kw.update(n_kv=2, tensors=b"", n_tensors=0, data=b"", pad_to=1)
    elif damage == "duplicate_key":
        kw.update(kv=arch + arch, n_kv=2)
    elif damage == "unknown_value_type":
        kw.update(kv=_s("x") + struct.pack("<I", 99) + b"\0" * 8)
    elif damage == "bad_utf8":
        kw.update(kv=_s("general.architecture") + struct.pack("<I", 8) + struct.pack("<Q", 2) + b"\xff\xfe")
    elif damage == "bad_alignment":
        kw.update(kv=arch + _s("general.alignment") + struct.pack("<II", 4, 48), n_kv=2)
    elif damage == "unknown_tensor_type":
        kw.update(tensors=_tensor_info("w", [4], 200))
    elif damage == "duplicate_tensor":
        kw.update(tensors=w + w, n_tensors=2)
    elif damage == "cut_in_tensor_data":
        kw.update(data=data[:10])
    if damage == "short_header":
        path = tmp_path / "bad.gguf"
        path.write_bytes(b"GGUF\3\0\0\0")
    elif damage != "cut_in_metadata":
        path = _file(tmp_path, **kw)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        GGUFFile(path)
    # through the model loader: one ModelLoadError naming the file
    with pytest.raises(ModelLoadError, match=f"{path}: not a readable GGUF file"):
        load_gguf(path)
