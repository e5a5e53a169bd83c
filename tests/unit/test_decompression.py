"""Bounded decompression: fetched record batches screened before aiokafka inflates them."""

from __future__ import annotations

import gzip
import json
import struct
import zlib

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from changegate.core import decompression
from changegate.core.decompression import MARKER, gzip_size, refused_batch, screen

MIB = 1024 * 1024


def batch(base_offset: int, values: list[bytes], codec: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(2, codec, 0, -1, -1, -1, 1 << 30)
    for delta, value in enumerate(values):
        builder.append(delta, 1_700_000_000_000 + delta, b"k", value, [])
    built = builder.build()
    struct.pack_into(">q", built, 0, base_offset)
    return bytes(built)


def records(data: bytes) -> list[tuple[int, bytes | None]]:
    found = []
    memory = MemoryRecords(data)
    while memory.has_next():
        found += [(r.offset, r.value) for r in memory.next_batch()]
    return found


def test_uncompressed_and_small_gzip_batches_pass_untouched() -> None:
    data = batch(0, [b"a", b"b"]) + batch(2, [b"c" * 1000, b"d"], codec=1)
    assert screen(data, limit=MIB) is data
    assert records(data) == [(0, b"a"), (1, b"b"), (2, b"c" * 1000), (3, b"d")]


def test_a_gzip_bomb_becomes_one_marker_at_its_last_offset_between_untouched_batches() -> None:
    bomb = batch(2, [b"\0" * (2 * MIB), b"\0" * 10, b"x"], codec=1)
    assert len(bomb) < 10_000
    data = batch(0, [b"a", b"b"]) + bomb + batch(5, [b"e"])
    screened = screen(data, limit=MIB)
    found = records(screened)
    assert [offset for offset, _ in found] == [0, 1, 4, 5]
    assert (found[0][1], found[1][1], found[3][1]) == (b"a", b"b", b"e")
    reason, detail = refused_batch(found[2][1]) or ("", "")
    assert reason == "decompression_limit"
    assert detail == f"a gzip batch of {len(bomb) - 61} bytes decompresses to more than {MIB} bytes"


def test_a_batch_at_the_limit_passes_and_one_byte_over_does_not() -> None:
    exact = batch(0, [b"\0" * 1000], codec=1)
    inflated = len(gzip.decompress(exact[61:]))
    assert screen(exact, limit=inflated) is exact
    [(offset, value)] = records(screen(exact, limit=inflated - 1))
    assert offset == 0
    assert (refused_batch(value) or ("",))[0] == "decompression_limit"


@pytest.mark.parametrize(("codec", "name"), [(2, "snappy"), (3, "lz4"), (4, "zstd"), (5, "codec 5")])
def test_a_codec_that_cannot_be_bounded_is_refused(codec: int, name: str) -> None:
    plain = bytearray(batch(7, [b"a", b"b"]))
    struct.pack_into(">h", plain, 21, codec)  # the attributes (the CRC no longer matches either)
    [(offset, value)] = records(screen(bytes(plain), limit=MIB))
    assert offset == 8
    assert refused_batch(value) == (
        "unsupported_compression",
        f"a {name} batch: only gzip is bounded (and read) here",
    )


def test_a_corrupt_or_empty_gzip_batch_is_refused() -> None:
    good = bytearray(batch(0, [b"hello" * 100], codec=1))
    good[70:80] = b"\xff" * 10
    [(_, value)] = records(screen(bytes(good), limit=MIB))
    assert (refused_batch(value) or ("",))[0] == "corrupt_batch"
    with pytest.raises(zlib.error, match="empty"):
        gzip_size(b"", MIB)
    with pytest.raises(zlib.error, match="truncated"):
        gzip_size(gzip.compress(b"x" * 1000)[:-12], MIB)


def test_a_legacy_compressed_message_set_is_refused() -> None:
    # v1 message: offset, size, crc, magic 1, attributes gzip, timestamp, key -1, value
    body = struct.pack(">bbqi", 1, 1, 0, -1) + struct.pack(">i", 3) + b"abc"
    message = struct.pack(">I", 0) + body
    legacy = struct.pack(">qi", 9, len(message)) + message
    screened = screen(legacy, limit=MIB)
    [(offset, value)] = records(screened)
    assert offset == 9
    assert (refused_batch(value) or ("",))[0] == "unsupported_compression"


def test_a_partial_batch_at_the_end_is_left_for_the_next_fetch() -> None:
    whole = batch(0, [b"a"])
    data = whole + batch(1, [b"\0" * MIB], codec=1)[:30]
    assert screen(data, limit=10) is data


def test_gzip_size_counts_every_member_and_stops_at_the_limit() -> None:
    two = gzip.compress(b"a" * 5000) + gzip.compress(b"b" * 7000)
    assert gzip_size(two, 12_000) == 12_000
    assert gzip_size(two, 11_999) is None
    assert gzip_size(gzip.compress(b"\0" * (64 * MIB)), 16 * MIB) is None


def test_markers_say_why_and_nothing_else_is_one() -> None:
    assert refused_batch(None) is None
    assert refused_batch(b'{"event_type": "decision"}') is None
    marker = MARKER + json.dumps({"reason": "decompression_limit", "detail": "d"}).encode()
    assert refused_batch(marker) == ("decompression_limit", "d")
    assert refused_batch(MARKER + b"not json") == (
        "undecodable",
        "a refused-batch marker that does not say why",
    )


def test_installed_in_aiokafkas_fetcher_once_with_one_limit() -> None:
    import changegate.core.kafka  # noqa: F401  (installs it)

    screened = fetcher.MemoryRecords
    assert getattr(screened, "changegate_screened", False)
    decompression.install()
    assert fetcher.MemoryRecords is screened
    bomb = batch(0, [b"\0" * (2 * MIB)], codec=1)
    try:
        decompression.set_limit(MIB)
        [(_, value)] = records_of(screened(bomb))
        assert (refused_batch(value) or ("",))[0] == "decompression_limit"
        decompression.set_limit(4 * MIB)
        assert records_of(screened(bomb)) == [(0, b"\0" * (2 * MIB))]
    finally:
        decompression.set_limit(decompression.DEFAULT_LIMIT)


def records_of(memory: MemoryRecords) -> list[tuple[int, bytes | None]]:
    found = []
    while memory.has_next():
        found += [(r.offset, r.value) for r in memory.next_batch()]
    return found
