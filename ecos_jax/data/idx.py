"""Read and write IDX files (the MNIST / Fashion-MNIST array format), gzipped or plain.

An IDX file is a 4-byte magic number `00 00 <dtype code> <ndim>`, then `ndim` big-endian
uint32 dimensions, then the values in C order, big-endian. The dtype codes are 0x08 uint8,
0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32 and 0x0E float64. Files whose first two
bytes are gzip's magic (1f 8b) are decompressed on the fly, whatever their name.

Every malformed file raises `IdxError` (a `ValueError`) naming the file and what is wrong:
a wrong magic number, an unknown dtype code, a header or body shorter or longer than the
header says, a corrupt gzip stream, or (when asked for) the wrong rank or dtype.

>>> import numpy as np, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "x-idx3-ubyte.gz")
>>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
>>> read_idx(path, ndim=3, dtype=np.uint8).shape
(2, 3, 4)
"""

from __future__ import annotations

import gzip
import os
import zlib

import numpy as np

# IDX dtype code -> numpy dtype (big-endian, as stored).
DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """A file that is not a well-formed IDX file (or not the one the caller expected)."""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt gzip stream
        raise IdxError(f"{path}: corrupt or truncated gzip data ({e})") from None


def read_idx(
    path: str | os.PathLike, *, ndim: int | None = None, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """The array stored in the IDX file at `path` (gzipped or plain), native byte order.

    ndim, dtype: when given, the file must hold an array of that rank / dtype, else IdxError.
    Returns a read-only array with the header's shape, e.g. [N, 28, 28] uint8 for images.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IdxError(f"{path}: {len(data)} bytes, too short for an IDX header (4-byte magic)")
    if data[0] != 0 or data[1] != 0:
        raise IdxError(
            f"{path}: not an IDX file (magic number {data[:4].hex()} does not start with 0000)"
        )
    code, rank = data[2], data[3]
    if code not in DTYPES:
        raise IdxError(
            f"{path}: unknown IDX dtype code 0x{code:02x} (known: "
            + ", ".join(f"0x{c:02x}" for c in DTYPES)
            + ")"
        )
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxError(f"{path}: truncated header ({len(data)} bytes, {rank} dims need {header})")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    stored = DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * stored.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"{path}: {what}: the header says shape {shape} of {stored.name} "
            f"({expected} bytes with the header), the file holds {len(data)}"
        )
    if ndim is not None and rank != ndim:
        raise IdxError(f"{path}: expected a {ndim}-d array, the file holds shape {shape}")
    out = np.frombuffer(data, stored, offset=header).reshape(shape)
    out = out.astype(stored.newbyteorder("="), copy=False)
    if dtype is not None and out.dtype != np.dtype(dtype):
        raise IdxError(f"{path}: expected {np.dtype(dtype).name} values, the file holds {out.dtype}")
    out.flags.writeable = False
    return out


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> None:
    """Write `array` as an IDX file; gzipped when `compress`, or by default when `path`
    ends in `.gz`. array: any shape (rank <= 255) of a dtype in `DTYPES`."""
    path = os.fspath(path)
    array = np.ascontiguousarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {sorted(map(str, _CODES))}")
    if array.ndim > 255:
        raise ValueError(f"IDX stores at most 255 dims; got {array.ndim}")
    code = _CODES[native]
    payload = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, ">u4").tobytes()
        + array.astype(DTYPES[code], copy=False).tobytes()
    )
    if compress is None:
        compress = path.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, mtime=0)  # mtime=0: the same array, the same bytes
    with open(path, "wb") as f:
        f.write(payload)
