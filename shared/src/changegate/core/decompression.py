"""Bounded decompression for every consumer, before anything is materialised.

aiokafka decompresses a fetched record batch whole, inside its fetcher, with no limit and no hook
(``DefaultRecordBatch._maybe_uncompress``): a 261 KB gzip batch becomes 256 MiB in every consumer
group of the topic, before any of our code sees a message. So each fetched buffer is screened
first, at the one place aiokafka turns fetched bytes into records (its fetcher's
``MemoryRecords``), for every aiokafka consumer in the process — the services' loops, the
detector's Faust app, the operator tools:

- a gzip batch is decompressed by streaming, a chunk at a time, counting and discarding the output:
  once the count passes the limit the batch is refused (aiokafka then decompresses only batches
  known to fit);
- a batch in a codec this process cannot bound or read (snappy, lz4, zstd — their libraries are
  not installed, aiokafka would fail on them and the partition would stall), a compressed message
  set of the pre-0.11 formats, or a gzip stream that is corrupt, is refused too.

A refused batch is replaced by one marker record at the batch's last offset; the consumer
dead-letters the marker with the reason (``decompression_limit``, ``unsupported_compression``,
``corrupt_batch``) and commits past the whole batch. The original stays in the source topic."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

from aiokafka.consumer import fetcher as _fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder

DEFAULT_LIMIT = 16 * 1024 * 1024
CHUNK = 1024 * 1024  # what one step of streaming decompression may produce
MARKER = b"\x00changegate:refused-batch\x00"  # no valid message starts with NUL

_OFFSET_AND_LENGTH = struct.Struct(">qi")
_V2_HEADER = struct.Struct(">qiibIhiqqqhii")  # base offset … records count: 61 bytes
_LEGACY_ATTRIBUTES = 17  # offset, size, crc, magic: then the attributes byte
_UNBOUNDED_CODECS = {2: "snappy", 3: "lz4", 4: "zstd"}  # 1 is gzip


class _Limit:
    bytes = DEFAULT_LIMIT


def set_limit(limit: int) -> None:
    """The same limit for every consumer of the process (``kafka_max_decompressed_batch_bytes``)."""
    _Limit.bytes = limit


def refused_batch(value: bytes | None) -> tuple[str, str] | None:
    """(reason, detail) if ``value`` is the marker of a refused batch, else None."""
    if value is None or not value.startswith(MARKER):
        return None
    try:
        found = json.loads(value[len(MARKER) :])
        return str(found["reason"]), str(found["detail"])
    except (ValueError, KeyError, TypeError):
        return "undecodable", "a refused-batch marker that does not say why"


def gzip_size(data: bytes | memoryview, limit: int) -> int | None:
    """The decompressed size of a gzip stream (members one after another), or None once it would
    exceed ``limit``; never more than ``CHUNK`` bytes of output at a time. zlib.error if corrupt."""
    total = 0
    pending = bytes(data)
    if not pending:
        raise zlib.error("empty gzip stream")
    while pending:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not inflater.eof:
            out = inflater.decompress(pending, CHUNK)
            total += len(out)
            if total > limit:
                return None
            if not out and not inflater.unconsumed_tail and not inflater.eof:
                raise zlib.error("truncated gzip stream")
            pending = inflater.unconsumed_tail
        pending = inflater.unused_data
    return total


def _refusal(codec: int, body: memoryview, limit: int) -> tuple[str, str] | None:
    if codec != 1:
        name = _UNBOUNDED_CODECS.get(codec, f"codec {codec}")
        return "unsupported_compression", f"a {name} batch: only gzip is bounded (and read) here"
    try:
        size = gzip_size(body, limit)
    except zlib.error as exc:
        return "corrupt_batch", f"a gzip batch that does not decompress: {exc}"
    if size is None:
        return (
            "decompression_limit",
            f"a gzip batch of {len(body)} bytes decompresses to more than {limit} bytes",
        )
    return None


def _marker_batch(base_offset: int, last_delta: int, timestamp: int, reason: str, detail: str) -> bytes:
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    value = MARKER + json.dumps({"reason": reason, "detail": detail}).encode()
    builder.append(last_delta, timestamp, None, value, [])
    batch = builder.build()
    struct.pack_into(">q", batch, 0, base_offset)  # outside the CRC, which covers attributes on
    return bytes(batch)


def screen(data: bytes, limit: int | None = None) -> bytes:
    """The fetched ``data`` with every batch that may not be decompressed replaced by a marker;
    ``data`` itself (not a copy) when every batch is fine."""
    limit = _Limit.bytes if limit is None else limit
    view = memoryview(data)
    parts: list[bytes | memoryview] = []
    kept_from = pos = 0
    while pos + _OFFSET_AND_LENGTH.size <= len(view):
        base_offset, length = _OFFSET_AND_LENGTH.unpack_from(view, pos)
        end = pos + _OFFSET_AND_LENGTH.size + length
        if length < 0 or end > len(view):
            break  # a partial batch at the end of a fetch: aiokafka leaves it for the next one
        if end < pos + _LEGACY_ATTRIBUTES + 1:
            break  # too short to be a batch: aiokafka's own checks refuse it
        magic = view[pos + 16]
        refusal: tuple[str, str] | None = None
        last_delta, timestamp = 0, 0
        if magic == 2 and end >= pos + _V2_HEADER.size:
            fields = _V2_HEADER.unpack_from(view, pos)
            attributes, last_delta, timestamp = fields[5], fields[6], fields[7]
            if attributes & 0x07:
                refusal = _refusal(attributes & 0x07, view[pos + _V2_HEADER.size : end], limit)
        elif magic in (0, 1) and view[pos + _LEGACY_ATTRIBUTES] & 0x07:
            refusal = "unsupported_compression", "a compressed message set of the pre-0.11 formats"
        if refusal is not None:
            parts += [view[kept_from:pos], _marker_batch(base_offset, last_delta, timestamp, *refusal)]
            kept_from = end
        pos = end
    if not parts:
        return data
    parts.append(view[kept_from:])
    return b"".join(parts)


def install() -> None:
    """Screen every buffer aiokafka's fetcher parses (idempotent)."""
    if getattr(_fetcher.MemoryRecords, "changegate_screened", False):
        return
    original: Callable[[bytes], Any] = _fetcher.MemoryRecords

    def screened(data: bytes) -> Any:
        return original(screen(data))

    screened.changegate_screened = True  # type: ignore[attr-defined]
    setattr(_fetcher, "MemoryRecords", screened)  # noqa: B010 (a module attribute aiokafka reads)
