"""Read the named arrays of a CTranslate2 `model.bin` (no converter, no ctranslate2 import).

The format (CTranslate2's `ModelSpec.save`, binary version 6): uint32 version, the spec's name (uint16 length +
NUL-terminated UTF-8) and uint32 revision, uint32 count of variables, then per variable its name, uint8 rank,
rank x uint32 dims, uint8 dtype id, uint32 byte count and the raw little-endian data; then uint32 count of aliases,
each an alias name and the variable it names.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from talkstream.errors import UserError

# CTranslate2's DataType enum, in its order.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(UserError, ValueError):
    """The file is not a CTranslate2 model of a version this reader knows."""


@dataclass
class CT2Model:
    spec: str  # e.g. "WhisperSpec"
    revision: int
    variables: dict[str, np.ndarray]


def read_ct2_model(path: str | Path) -> CT2Model:
    """Every variable of `path` (a model.bin) as numpy arrays; aliases resolve to the same array."""
    data = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        if pos + struct.calcsize(fmt) > len(data):
            raise CT2FormatError(f"{path}: truncated CTranslate2 model")
        (v,) = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def text() -> str:
        nonlocal pos
        n = take("H")
        if n == 0 or pos + n > len(data):
            raise CT2FormatError(f"{path}: truncated CTranslate2 model")
        s = data[pos : pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = take("I")
    if version not in SUPPORTED_VERSIONS:
        raise CT2FormatError(f"{path}: CTranslate2 binary version {version} is not supported {SUPPORTED_VERSIONS}")
    spec, revision = text(), take("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        dims = [take("I") for _ in range(take("B"))]
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in _DTYPES:
            raise CT2FormatError(f"{path}: variable {name} has unsupported dtype id {dtype_id}")
        if pos + nbytes > len(data):
            raise CT2FormatError(f"{path}: truncated CTranslate2 model")
        arr = np.frombuffer(data, dtype=_DTYPES[dtype_id], count=nbytes // np.dtype(_DTYPES[dtype_id]).itemsize,
                            offset=pos)
        variables[name] = arr.reshape(dims) if dims else arr.reshape(())
        pos += nbytes
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return CT2Model(spec, revision, variables)
