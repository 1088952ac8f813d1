"""A GGUF file's metadata and tensors, read in one pass.

``gguf.GGUFReader`` builds a numpy view for every part of every metadata value: a tokenizer of 49k tokens and
49k merges becomes about a million small arrays, three seconds per open of a 135M model's file (and a second
open for its tokenizer). ``GGUFFile`` decodes the metadata with ``struct`` into plain Python values (a tenth of
a second for the same file) and lays out each tensor exactly as ``GGUFReader`` does (a memory-mapped array: the
element type for F32/F16/F64/integer tensors, bytes shaped by ``gguf.quants.quant_shape_to_byte_shape`` for
quantised ones), so ``gguf.quants.dequantize`` applies unchanged.

The format (GGUF versions 2 and 3, little-endian): magic ``GGUF``, version u32, tensor count u64, key-value count
u64, the key-value pairs (key: u64 length + UTF-8 bytes; value type u32; value), the tensor infos (name, number of
dimensions u32, dimensions u64 each, ggml type u32, offset u64 relative to the data section), padding to
``general.alignment`` (32 by default), then the tensor data. A byte-swapped (big-endian) file is read through
``gguf.GGUFReader`` instead. Every problem is a ``ValueError`` that says what is wrong and where.
"""

from __future__ import annotations

import mmap
import os
import struct
from typing import Any, NamedTuple

import numpy as np

_MAGIC = b"GGUF"
_SUPPORTED_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32

# GGUF value types: (struct format, numpy dtype) of the scalar ones.
_SCALARS = {
    0: ("<B", np.uint8), 1: ("<b", np.int8), 2: ("<H", np.uint16), 3: ("<h", np.int16),
    4: ("<I", np.uint32), 5: ("<i", np.int32), 6: ("<f", np.float32), 7: ("<?", np.bool_),
    10: ("<Q", np.uint64), 11: ("<q", np.int64), 12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class GGUFTensor(NamedTuple):
    """One tensor as ``gguf.GGUFReader`` gives it: ``shape`` in GGUF order (innermost dimension first)."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray


class _Cursor:
    """Reads little-endian values from a buffer, checking every read against its end."""

    def __init__(self, buf, size: int):
        self.buf, self.size, self.off = buf, size, 0

    def need(self, n: int, what: str) -> int:
        start = self.off
        if n < 0 or start + n > self.size:
            raise ValueError(f"truncated: {what} at byte {start} needs {n} bytes, the file has {self.size}")
        self.off = start + n
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.need(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.need(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(what)
        start = self.need(n, what)
        raw = self.buf[start:start + n]
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{what} at byte {start} is not UTF-8: {e}") from e

    def value(self, vtype: int, what: str) -> Any:
        if vtype == _STRING:
            return self.string(what)
        if vtype in _SCALARS:
            fmt = _SCALARS[vtype][0]
            return struct.unpack_from(fmt, self.buf, self.need(struct.calcsize(fmt), what))[0]
        if vtype == _ARRAY:
            itype = self.u32(what)
            n = self.u64(what)
            if itype in _SCALARS:
                dtype = np.dtype(_SCALARS[itype][1]).newbyteorder("<")
                start = self.need(n * dtype.itemsize, what)
                return np.frombuffer(self.buf, dtype, n, start).tolist()
            if itype == _STRING:
                return [self.string(what) for _ in range(n)]
            return [self.value(itype, what) for _ in range(n)]
        raise ValueError(f"{what}: unknown GGUF value type {vtype}")


class GGUFFile:
    """A GGUF file: ``fields`` (metadata key -> str, int, float, bool or list), ``tensors`` (GGUFTensor, in file
    order), ``version``, ``alignment`` and ``data_offset``. Tensor data are read-only views of a memory map."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise ValueError(f"truncated: {size} bytes, fewer than a GGUF header's 24")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(buf, size)
        finally:
            buf.close()

    @staticmethod
    def byte_swapped(path: str | os.PathLike) -> bool:
        """Whether the file is a GGUF written in the other byte order (its version's low half reads as 0)."""
        with open(path, "rb") as f:
            head = f.read(8)
        return len(head) == 8 and head[:4] == _MAGIC and _U32.unpack_from(head, 4)[0] & 0xFFFF == 0

    def _parse(self, buf, size: int) -> None:
        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        if buf[:4] != _MAGIC:
            raise ValueError(f"not a GGUF file (magic {bytes(buf[:4])!r}, expected {_MAGIC!r})")
        c = _Cursor(buf, size)
        c.need(4, "magic")
        self.version = c.u32("version")
        if self.version not in _SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {self.version} is not supported (supported: 2, 3)")
        n_tensors = c.u64("tensor count")
        n_fields = c.u64("metadata count")
        self.fields: dict[str, Any] = {}
        for i in range(n_fields):
            key = c.string(f"metadata key #{i}")
            value = c.value(c.u32(f"type of metadata {key!r}"), f"metadata {key!r}")
            if key in self.fields:
                raise ValueError(f"metadata key {key!r} appears twice")
            self.fields[key] = value
        infos = []
        for i in range(n_tensors):
            name = c.string(f"name of tensor #{i}")
            n_dims = c.u32(f"tensor {name!r}")
            start = c.need(8 * n_dims, f"dimensions of tensor {name!r}")
            dims = np.frombuffer(buf, np.dtype("<u8"), n_dims, start).copy()
            infos.append((name, dims, c.u32(f"type of tensor {name!r}"), c.u64(f"offset of tensor {name!r}")))
        align = self.fields.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or isinstance(align, bool) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment={align!r} is not a power of two")
        self.alignment = align
        self.data_offset = -(-c.off // align) * align

        whole = np.memmap(self.path, mode="r") if infos else None
        elementwise = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
                       GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
                       GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
                       GGMLQuantizationType.I64: np.int64}
        self.tensors: list[GGUFTensor] = []
        seen = set()
        for name, dims, raw_type, rel in infos:
            if name in seen:
                raise ValueError(f"tensor {name!r} appears twice")
            seen.add(name)
            try:
                qtype = GGMLQuantizationType(raw_type)
            except ValueError:
                raise ValueError(f"tensor {name!r} has unknown ggml type {raw_type}") from None
            block, type_size = GGML_QUANT_SIZES[qtype]
            n_elems = int(np.prod(dims, dtype=np.int64)) if len(dims) else 1
            n_bytes = n_elems * type_size // block
            offset = self.data_offset + rel
            if offset + n_bytes > size:
                raise ValueError(f"truncated: tensor {name!r} ({n_bytes} bytes at byte {offset}) runs past the "
                                 f"end of the file ({size} bytes)")
            np_dims = tuple(int(d) for d in reversed(dims.tolist()))
            item = elementwise.get(qtype)
            if item is None:
                item, np_dims = np.uint8, quant_shape_to_byte_shape(np_dims, qtype)
            data = whole[offset:offset + n_bytes].view(item).reshape(np_dims)
            self.tensors.append(GGUFTensor(name, qtype, dims, n_elems, n_bytes, offset, data))


def read_gguf(path: str | os.PathLike):
    """A ``GGUFFile`` of ``path``; a byte-swapped file through ``gguf.GGUFReader`` in the same form."""
    if GGUFFile.byte_swapped(path):
        from gguf import GGUFReader

        r = GGUFReader(path)
        out = GGUFFile.__new__(GGUFFile)
        out.path = os.fspath(path)
        out.fields = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
        out.tensors = [GGUFTensor(t.name, t.tensor_type, t.shape, t.n_elements, t.n_bytes, t.data_offset, t.data)
                       for t in r.tensors]
        out.version = int(r.fields["GGUF.version"].contents())
        out.alignment, out.data_offset = int(r.alignment), int(r.data_offset)
        return out
    return GGUFFile(path)
