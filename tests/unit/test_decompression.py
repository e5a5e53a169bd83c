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


def test_the_default_limit_is_the_settings_default_of_16_mib() -> None:
    from changegate.core.settings import CommonSettings

    assert decompression.DEFAULT_LIMIT == 16 * MIB
    assert CommonSettings().kafka_max_decompressed_batch_bytes == decompression.DEFAULT_LIMIT


def test_the_marker_is_a_plain_v2_batch_at_the_refused_batchs_place_and_time() -> None:
    from aiokafka.record.default_records import DefaultRecordBatch

    bomb = batch(40, [b"\0" * (2 * MIB), b"x"], codec=1)
    first_timestamp = 1_700_000_000_000
    marker = DefaultRecordBatch(screen(bomb, limit=MIB))
    assert (marker.magic, marker.compression_type, marker.is_transactional) == (2, 0, False)
    assert (marker.producer_id, marker.producer_epoch, marker.base_sequence) == (-1, -1, -1)
    assert (marker.base_offset, marker.next_offset) == (40, 42)
    assert marker.validate_crc()
    [record] = list(marker)
    assert (record.offset, record.timestamp, record.key, record.headers) == (41, first_timestamp, None, [])


def test_every_refusal_says_why_in_words() -> None:
    assert _reason(screen(_with_body(bytearray(batch(0, [b"x"] * 3, codec=1)), b""), limit=MIB)) == (
        "corrupt_batch",
        "a gzip batch that does not decompress: empty gzip stream",
    )
    cut = bytearray(batch(0, [b"hello" * 1000], codec=1))
    body = gzip.compress(b"hello" * 1000)[:5]  # cut inside the gzip header: no output at all
    truncated = _with_body(cut, body)
    assert _reason(screen(truncated, limit=MIB)) == (
        "corrupt_batch",
        "a gzip batch that does not decompress: truncated gzip stream",
    )
    assert _reason(screen(_with_body(cut, zlib.compress(b"x" * 100)), limit=MIB))[0] == "corrupt_batch"
    legacy = _legacy(magic=0, attributes=1)
    assert _reason(screen(legacy, limit=MIB)) == (
        "unsupported_compression",
        "a compressed message set of the pre-0.11 formats",
    )


def test_a_zero_record_gzip_batch_is_judged_too() -> None:
    header_only = bytearray(batch(3, [b"x"], codec=1)[:61])
    struct.pack_into(">i", header_only, 8, 61 - 12)
    assert _reason(screen(bytes(header_only), limit=MIB))[0] == "corrupt_batch"


@pytest.mark.parametrize("magic", [0, 1])
def test_legacy_message_sets_pass_unless_compressed(magic: int) -> None:
    plain = _legacy(magic=magic, attributes=0)
    assert screen(plain, limit=MIB) is plain
    [(offset, value)] = records(screen(_legacy(magic=magic, attributes=1), limit=MIB))
    assert offset == 9
    assert (refused_batch(value) or ("",))[0] == "unsupported_compression"
    mixed = plain + batch(10, [b"a"])
    assert screen(mixed, limit=MIB) is mixed


@pytest.mark.parametrize("length", [0, 2, 4, 5])
def test_a_batch_too_short_to_be_one_ends_the_screening(length: int) -> None:
    whole = batch(0, [b"a"])
    data = whole + struct.pack(">qi", 1, length) + b"\x01" * length
    assert screen(data, limit=10) is data


def test_the_shortest_legacy_message_set_is_still_read() -> None:
    # 18 bytes after the offset: size, crc, magic, attributes and nothing else; compressed.
    tiny = struct.pack(">qi", 4, 6) + struct.pack(">Ibb", 0, 1, 2)
    assert len(tiny) == 18
    [(offset, value)] = records(screen(tiny, limit=MIB))
    assert offset == 4
    assert (refused_batch(value) or ("",))[0] == "unsupported_compression"


def _reason(data: bytes) -> tuple[str, str]:
    [(_, value)] = records(data)
    return refused_batch(value) or ("", "")


def _with_body(header_source: bytearray, body: bytes) -> bytes:
    data = bytearray(header_source[:61]) + body
    struct.pack_into(">i", data, 8, len(data) - 12)
    return bytes(data)


def _legacy(magic: int, attributes: int) -> bytes:
    value = b"abc"
    if magic == 1:
        body = struct.pack(">bbqi", magic, attributes, 0, -1) + struct.pack(">i", len(value)) + value
    else:
        body = struct.pack(">bbi", magic, attributes, -1) + struct.pack(">i", len(value)) + value
    message = struct.pack(">I", zlib.crc32(body)) + body
    return struct.pack(">qi", 9, len(message)) + message


def test_a_legacy_set_is_never_read_as_a_v2_batch() -> None:
    # A plain v1 message longer than a v2 header, whose timestamp sets the bits where a v2
    # batch keeps its codec: it passes as it is.
    value = b"v" * 60
    body = struct.pack(">bbqi", 1, 0, 1 << 24, -1) + struct.pack(">i", len(value)) + value
    message = struct.pack(">I", zlib.crc32(body)) + body
    plain = struct.pack(">qi", 9, len(message)) + message
    assert screen(plain, limit=MIB) is plain


def test_a_v2_batch_shorter_than_its_header_is_left_to_aiokafka() -> None:
    short = struct.pack(">qii", 1, 40, -1) + b"\x02" + b"\x01" * 39
    data = batch(0, [b"a"]) + short
    assert screen(data, limit=MIB) is data


def test_a_legacy_marker_is_at_time_zero() -> None:
    from aiokafka.record.default_records import DefaultRecordBatch

    marker = DefaultRecordBatch(screen(_legacy(magic=1, attributes=1), limit=MIB))
    assert marker.validate_crc()
    [record] = list(marker)
    assert (record.offset, record.timestamp) == (9, 0)
