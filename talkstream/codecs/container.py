"""The token container (.tsk for audio, .tsv for video): versioned, checked, bit-packed.

    offset  size  field
    0       4     magic b"TSK\\x00"
    4       1     format version (1)
    5       4     header length N, uint32 little-endian
    9       N     JSON header: kind, codec_id, sample_rate, frame_rate, frame_size, num_codebooks, codebook_size,
                  num_frames, num_samples, crc32 (of the payload); audio codec v4 adds pitch_bits (and its
                  num_codebooks counts the pitch row)
    9+N     ...   payload: codes frame by frame (frame 0 codebooks 0..K-1, frame 1 ...), each code in
                  ceil(log2(codebook_size)) bits (with pitch_bits: row 0, the pitch, in pitch_bits bits),
                  big-endian bit order, zero-padded to a whole byte

So a file's size is its bitrate: 75 frames/s x 8 codebooks x 10 bits = 6 kbps plus a ~250-byte header (codec v4:
75 x (6 + 8 x 10) = 6.45 kbps).
Readers refuse other magics and versions, truncated payloads, CRC mismatches and codes out of range.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from talkstream.errors import UserError

MAGIC = b"TSK\x00"
VERSION = 1
_REQUIRED = ("kind", "codec_id", "num_codebooks", "codebook_size", "num_frames", "crc32")


class ContainerError(UserError, ValueError):
    """A token file is not one of ours, of another version, truncated or corrupted. The message is for the user."""


def bits_per_code(codebook_size: int) -> int:
    return max(1, (int(codebook_size) - 1).bit_length())


def row_bits(num_rows: int, codebook_size: int, pitch_bits: int = 0) -> list[int]:
    """Bits of each row's codes: `bits_per_code`, except row 0 in `pitch_bits` bits when that is given."""
    bits = [bits_per_code(codebook_size)] * num_rows
    if pitch_bits and num_rows:
        bits[0] = int(pitch_bits)
    return bits


def pack_codes(codes: np.ndarray, codebook_size: int, pitch_bits: int = 0) -> bytes:
    """codes [K, F] -> bytes, frame-major, each row's codes in its `row_bits`."""
    columns = []
    for row, bits in zip(codes, row_bits(codes.shape[0], codebook_size, pitch_bits), strict=True):
        shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
        columns.append((row.astype(np.uint32)[:, None] >> shifts) & 1)  # [F, bits]
    if not columns:
        return b""
    return np.packbits(np.concatenate(columns, axis=1).astype(np.uint8).reshape(-1)).tobytes()


def unpack_codes(payload: bytes, num_codebooks: int, num_frames: int, codebook_size: int,
                 pitch_bits: int = 0) -> np.ndarray:
    widths = row_bits(num_codebooks, codebook_size, pitch_bits)
    per_frame = sum(widths)
    need = (num_frames * per_frame + 7) // 8
    if len(payload) != need:
        raise ContainerError(f"payload is {len(payload)} bytes, header says {need} (truncated or padded file)")
    raw = np.unpackbits(np.frombuffer(payload, np.uint8))[: num_frames * per_frame].reshape(num_frames, per_frame)
    rows, start = [], 0
    for bits in widths:
        rows.append(raw[:, start : start + bits].astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64)))
        start += bits
    return np.stack(rows) if rows else np.zeros((0, num_frames), np.int64)


def write_tokens(path: str | Path, codes: np.ndarray, header: dict) -> None:
    """codes: int [K, F]; header: codec facts (kind, codec_id, sample_rate, ...). Size and CRC are filled in."""
    codes = np.asarray(codes)
    k, f = codes.shape
    payload = pack_codes(codes, header["codebook_size"], int(header.get("pitch_bits", 0)))
    meta = {**header, "num_codebooks": int(k), "num_frames": int(f), "crc32": zlib.crc32(payload)}
    blob = json.dumps(meta, separators=(",", ":")).encode()
    Path(path).write_bytes(MAGIC + struct.pack("<BI", VERSION, len(blob)) + blob + payload)


def read_tokens(path: str | Path, kind: str) -> tuple[dict, np.ndarray]:
    """-> (header, codes int64 [K, F]); raises ContainerError on anything that is not a valid file of `kind`."""
    path = Path(path)
    if not path.is_file():
        raise ContainerError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) < 9 or data[:4] != MAGIC:
        raise ContainerError(f"{path}: not a talkstream token file (bad magic)")
    version, n = struct.unpack("<BI", data[4:9])
    if version != VERSION:
        raise ContainerError(f"{path}: token file version {version}, this talkstream reads version {VERSION}")
    if 9 + n > len(data):
        raise ContainerError(f"{path}: truncated header")
    try:
        meta = json.loads(data[9 : 9 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ContainerError(f"{path}: corrupted header") from None
    if not isinstance(meta, dict) or any(key not in meta for key in _REQUIRED):
        raise ContainerError(f"{path}: header lacks {[k for k in _REQUIRED if k not in meta]}")
    if meta["kind"] != kind:
        raise ContainerError(f"{path}: holds {meta['kind']!r} tokens, expected {kind!r}")
    payload = data[9 + n :]
    try:
        codes = unpack_codes(payload, int(meta["num_codebooks"]), int(meta["num_frames"]), int(meta["codebook_size"]),
                             int(meta.get("pitch_bits", 0)))
    except ContainerError as e:
        raise ContainerError(f"{path}: {e}") from None
    if zlib.crc32(payload) != meta["crc32"]:
        raise ContainerError(f"{path}: checksum mismatch (corrupted payload)")
    books = codes[1:] if int(meta.get("pitch_bits", 0)) else codes  # a pitch row fits its bits by construction
    if books.size and books.max() >= int(meta["codebook_size"]):
        raise ContainerError(f"{path}: code out of range for codebook size {meta['codebook_size']}")
    return meta, codes
