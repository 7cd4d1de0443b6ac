"""A small msgpack reader/writer for UNITER image DB records (msgpack + msgpack_numpy arrays).

UNITER writes uncompressed records with ``msgpack.dumps(dump, use_bin_type=True)`` after
``msgpack_numpy.patch()``, which encodes each array as a map ``{nd: True, type: dtype.str, kind: b"",
shape: [...], data: <bytes>}``. This module handles that subset (nil, bool, ints, floats, str, bin, array,
map) so that reading those DBs needs no extra package. Extension types are refused.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np


class MsgpackError(ValueError):
    pass


def _decode_ndarray(obj: dict) -> Any:
    def get(key: str):
        return obj[key] if key in obj else obj.get(key.encode())

    if get("nd") is not True:
        return obj
    dtype = get("type")
    dtype = dtype.decode() if isinstance(dtype, bytes) else dtype
    kind = get("kind") or b""
    if kind not in (b"", ""):
        raise MsgpackError(f"unsupported msgpack_numpy array kind {kind!r}")
    shape = tuple(int(s) for s in get("shape"))
    return np.frombuffer(get("data"), dtype=np.dtype(dtype)).reshape(shape).copy()


class _Reader:
    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise MsgpackError("truncated msgpack data")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.take(size))[0]

    def read(self) -> Any:
        b = self.unpack(">B")
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F)
        if 0x90 <= b <= 0x9F:
            return self.array(b & 0x0F)
        if 0xA0 <= b <= 0xBF:
            return bytes(self.take(b & 0x1F)).decode("utf-8")
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        if b in (0xC4, 0xC5, 0xC6):
            n = self.unpack({0xC4: ">B", 0xC5: ">H", 0xC6: ">I"}[b])
            return bytes(self.take(n))
        if b in (0xCA, 0xCB):
            return self.unpack(">f" if b == 0xCA else ">d")
        ints = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q"}
        if b in ints:
            return self.unpack(ints[b])
        if b in (0xD9, 0xDA, 0xDB):
            n = self.unpack({0xD9: ">B", 0xDA: ">H", 0xDB: ">I"}[b])
            return bytes(self.take(n)).decode("utf-8")
        if b in (0xDC, 0xDD):
            return self.array(self.unpack(">H" if b == 0xDC else ">I"))
        if b in (0xDE, 0xDF):
            return self.map(self.unpack(">H" if b == 0xDE else ">I"))
        raise MsgpackError(f"unsupported msgpack type byte 0x{b:02x}")

    def array(self, n: int) -> list:
        return [self.read() for _ in range(n)]

    def map(self, n: int) -> Any:
        out = {}
        for _ in range(n):
            k = self.read()
            out[k] = self.read()
        return _decode_ndarray(out)


def unpackb(data: bytes) -> Any:
    """Decode one msgpack object; msgpack_numpy arrays come back as numpy arrays."""
    reader = _Reader(data)
    obj = reader.read()
    if reader.pos != len(reader.data):
        raise MsgpackError("trailing bytes after the msgpack object")
    return obj


def packb(obj: Any) -> bytes:
    """Encode like ``msgpack.dumps(obj, use_bin_type=True)`` with msgpack_numpy (arrays -> bin maps)."""
    out = bytearray()
    _pack(obj, out)
    return bytes(out)


def _pack(obj: Any, out: bytearray) -> None:
    if isinstance(obj, np.ndarray):
        obj = {b"nd": True, b"type": obj.dtype.str, b"kind": b"", b"shape": list(obj.shape), b"data": obj.tobytes()}
    if obj is None:
        out.append(0xC0)
    elif obj is True or obj is False:
        out.append(0xC3 if obj else 0xC2)
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        if 0 <= v <= 0x7F:
            out.append(v)
        elif -32 <= v < 0:
            out += struct.pack(">b", v)
        elif v >= 0:
            out += b"\xcf" + struct.pack(">Q", v)
        else:
            out += b"\xd3" + struct.pack(">q", v)
    elif isinstance(obj, (float, np.floating)):
        out += b"\xcb" + struct.pack(">d", float(obj))
    elif isinstance(obj, str):
        raw = obj.encode("utf-8")
        out += b"\xdb" + struct.pack(">I", len(raw)) + raw
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        raw = bytes(obj)
        out += b"\xc6" + struct.pack(">I", len(raw)) + raw
    elif isinstance(obj, (list, tuple)):
        out += b"\xdd" + struct.pack(">I", len(obj))
        for item in obj:
            _pack(item, out)
    elif isinstance(obj, dict):
        out += b"\xdf" + struct.pack(">I", len(obj))
        for k, v in obj.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise MsgpackError(f"cannot msgpack a {type(obj).__name__}")
