"""The video codec v2's bitstream: one packet per frame, and a file of packets.

Packet (what a stream sends per frame, all of it counted in the bitrate):

    byte 0      version (high 4 bits, 2) | frame type (low 4 bits: 1 key frame, 0 inter frame)
    byte 1      quality index
    byte 2      skipped blocks: 0 none, 255 all (the frame repeats the previous one; no payload), else the share
                of skipped blocks x 255, and the payload starts with one skip flag per block
    bytes 3-4   CRC-16 (CCITT, big-endian) of bytes 0-2 and the payload
    payload     range-coder words (uint32, little-endian): the skip flags, z's residual symbols, then y's (those
                of the blocks not skipped)

Flags are coded under a Bernoulli of the header's share; symbols are integers in [-MAX_SYMBOL, MAX_SYMBOL], each
coded under a zero-mean quantized Gaussian of the scale the model gives it (`constriction`'s range coder). A packet
that is short, of another version, fails its CRC, or does not decode to exactly the symbols the model asks for is
refused with `BitstreamError` (a ValueError).

File (`.tsv2`): b"TSV2", a version byte, a uint32 length and a JSON header (the codec id, frame rate, frame count,
source size), then each packet as a uint32 length and its bytes.
"""

from __future__ import annotations

import binascii
import json
import struct

import numpy as np
import torch
from torch import Tensor

from talkstream.errors import UserError

VERSION = 2
FRAME_HEADER_BYTES = 5
MAX_SYMBOL = 64
FILE_MAGIC = b"TSV2"
FILE_VERSION = 1


class BitstreamError(UserError, ValueError):
    """A video v2 packet or file is corrupted, truncated, or of another version. The message is for the user."""


def _coder():
    try:
        import constriction
    except ImportError as e:
        raise UserError(f"the video codec v2 needs constriction: pip install 'talkstream[video]' ({e})") from None
    return constriction


def _crc(head: bytes, payload: bytes) -> int:
    return binascii.crc_hqx(payload, binascii.crc_hqx(head, 0))


def _gaussian(constriction):
    return constriction.stream.model.QuantizedGaussian(-MAX_SYMBOL, MAX_SYMBOL)


def pack_frame(
    intra: bool, quality: int, skip: int, flags: Tensor | None, groups: list[tuple[Tensor, Tensor]]
) -> bytes:
    """(key frame?, quality index, skip byte, skip flags (bool, one per block; None unless 0 < skip < 255),
    [(symbols, scales), ...] in decoding order) -> packet bytes."""
    constriction = _coder()
    enc = constriction.stream.queue.RangeEncoder()
    if flags is not None:
        f = flags.detach().cpu().numpy().astype(np.int32).ravel()
        enc.encode(f, constriction.stream.model.Bernoulli(perfect=False), np.full(f.shape, skip / 255))
    model = _gaussian(constriction)
    for symbols, scales in groups:
        sym = symbols.detach().cpu().numpy().astype(np.int32).ravel()
        std = scales.detach().cpu().double().numpy().ravel()
        enc.encode(sym, model, np.zeros_like(std), std)
    payload = enc.get_compressed().astype("<u4").tobytes()
    head = bytes([VERSION << 4 | int(intra), quality, skip])
    return head + struct.pack(">H", _crc(head, payload)) + payload


class FrameReader:
    """Reads a packet's flags and symbol groups back, in the order they were packed."""

    def __init__(self, words: np.ndarray):
        self._constriction = _coder()
        self._model = _gaussian(self._constriction)
        self._dec = self._constriction.stream.queue.RangeDecoder(words)

    def _decode(self, *args) -> np.ndarray:
        try:
            return np.asarray(self._dec.decode(*args))
        except Exception as e:  # constriction raises its own errors on words it cannot decode
            raise BitstreamError(f"video v2 packet: payload does not decode ({e})") from None

    def read_flags(self, share: float, count: int) -> Tensor:
        """-> bool [count]."""
        model = self._constriction.stream.model.Bernoulli(perfect=False)
        return torch.from_numpy(self._decode(model, np.full(count, share)).astype(bool))

    def read(self, scales: Tensor) -> Tensor:
        """scales [...] -> symbols float [...] (the shape of `scales`)."""
        std = scales.detach().cpu().double().numpy().ravel()
        sym = self._decode(self._model, np.zeros_like(std), std)
        return torch.from_numpy(sym.astype(np.float32)).view(scales.shape).to(scales.device)

    def close(self) -> None:
        if not self._dec.maybe_exhausted():
            raise BitstreamError("video v2 packet: payload longer than its frame (trailing data)")


def open_frame(packet: bytes, quality_levels: int) -> tuple[bool, int, int, FrameReader]:
    """packet bytes -> (key frame?, quality index, skip byte, reader of its payload); refuses what is not a whole
    v2 frame."""
    if not isinstance(packet, bytes | bytearray) or len(packet) < FRAME_HEADER_BYTES:
        raise BitstreamError(f"video v2 packet: {len(packet)} bytes, shorter than its {FRAME_HEADER_BYTES}-byte header")
    version, kind, quality, skip = packet[0] >> 4, packet[0] & 15, packet[1], packet[2]
    if version != VERSION:
        raise BitstreamError(f"video v2 packet: bitstream version {version}, this decoder reads {VERSION}")
    if kind > 1 or quality >= quality_levels or (kind == 1 and skip):
        raise BitstreamError(f"video v2 packet: bad header (frame type {kind}, quality {quality}, skip {skip})")
    payload = bytes(packet[FRAME_HEADER_BYTES:])
    if len(payload) % 4 or (struct.unpack(">H", packet[3:5])[0] != _crc(bytes(packet[:3]), payload)):
        raise BitstreamError("video v2 packet: checksum mismatch (corrupted or truncated)")
    return kind == 1, quality, skip, FrameReader(np.frombuffer(payload, dtype="<u4").astype(np.uint32))


def write_stream(header: dict, packets: list[bytes]) -> bytes:
    """A header and packets -> the bytes of a .tsv2 file."""
    head = json.dumps(header).encode()
    parts = [FILE_MAGIC, bytes([FILE_VERSION]), struct.pack("<I", len(head)), head]
    for p in packets:
        parts += [struct.pack("<I", len(p)), p]
    return b"".join(parts)


def read_stream(data: bytes) -> tuple[dict, list[bytes]]:
    """The bytes of a .tsv2 file -> (header, packets); refuses other files and versions, and truncation."""
    if data[:4] != FILE_MAGIC:
        raise BitstreamError("not a talkstream video v2 file (bad magic)")
    if len(data) < 9 or data[4] != FILE_VERSION:
        raise BitstreamError(f"video v2 file version {data[4] if len(data) > 4 else None}, expected {FILE_VERSION}")
    (n,) = struct.unpack("<I", data[5:9])
    try:
        header = json.loads(data[9 : 9 + n])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BitstreamError("video v2 file: unreadable header") from None
    pos, packets = 9 + n, []
    while pos < len(data):
        if pos + 4 > len(data):
            raise BitstreamError("video v2 file: truncated")
        (size,) = struct.unpack("<I", data[pos : pos + 4])
        if pos + 4 + size > len(data):
            raise BitstreamError("video v2 file: truncated")
        packets.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    if header.get("num_frames") is not None and header["num_frames"] != len(packets):
        raise BitstreamError(f"video v2 file: {len(packets)} packets, header says {header['num_frames']}")
    return header, packets
