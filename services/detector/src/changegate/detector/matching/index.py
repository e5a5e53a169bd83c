"""The blocking index in process memory, compact: a few hundred bytes per record.

PostgreSQL holds the records (``detector_records``); this index is derived from them, rebuilt at
start and kept current by the records the process writes, so a lookup costs no round trip.

- each record has a *slot*: its id and its features packed into one string;
- each blocking key is hashed to 64 bits; postings (hash, slot) live in sorted numpy arrays
  (*runs*, 12 bytes a posting) plus a small dict of recent postings, folded into a run when it
  fills; runs of similar size are merged, so there are few of them (as in an LSM tree);
- a changed record takes a new slot and its old slot dies: dead postings are skipped on lookup
  and dropped when runs merge.

A key held by more than ``MAX_RECORDS_PER_KEY`` live records is skipped (``blocking.py``)."""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import fields

import numpy as np
import numpy.typing as npt
from changegate.detector.matching.blocking import (
    MAX_CANDIDATES,
    MAX_RECORDS_PER_KEY,
    blocking_keys,
    select_candidates,
)
from changegate.detector.matching.normalize import Features

_SEP = "\x1f"
_FIELDS = tuple(f.name for f in fields(Features) if f.name != "object_type")
RECENT_POSTINGS = 100_000  # folded into a sorted run beyond this
_MASK = (1 << 64) - 1

Hashes = npt.NDArray[np.uint64]
Slots = npt.NDArray[np.uint32]


def key_hash(key: str) -> int:
    """64-bit hash of a key (Python's string hash: per process, like the index itself). A collision
    only adds a candidate, which the comparison then rejects."""
    return hash(key) & _MASK


def pack(f: Features) -> str:
    return _SEP.join(getattr(f, name).replace(_SEP, " ") for name in _FIELDS)


def unpack(object_type: str, packed: str) -> Features:
    return Features(object_type, *packed.split(_SEP))


class BlockingIndex:
    """The records of one object type, by blocking key."""

    def __init__(
        self,
        object_type: str,
        max_records_per_key: int = MAX_RECORDS_PER_KEY,
        max_candidates: int = MAX_CANDIDATES,
    ) -> None:
        self.object_type = object_type
        self.max_records_per_key = max_records_per_key
        self.max_candidates = max_candidates
        self._slot_of: dict[str, int] = {}
        self._ids: list[str | None] = []  # slot -> record id; None once the slot is dead
        self._packed: list[str | None] = []
        self._alive = bytearray()  # slot -> 1 while live: a numpy mask when runs merge
        self._runs: list[tuple[Hashes, Slots]] = []
        self._recent: dict[int, list[int]] = {}
        self._recent_count = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    @property
    def postings(self) -> int:
        return sum(len(h) for h, _ in self._runs) + self._recent_count

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._slot_of

    def features(self, record_id: str) -> Features | None:
        slot = self._slot_of.get(record_id)
        packed = None if slot is None else self._packed[slot]
        return None if packed is None else unpack(self.object_type, packed)

    def _new_slot(self, record_id: str, f: Features) -> int:
        self.remove(record_id)
        slot = len(self._ids)
        self._ids.append(record_id)
        self._packed.append(pack(f))
        self._alive.append(1)
        self._slot_of[record_id] = slot
        return slot

    def put(self, record_id: str, f: Features) -> None:
        """Index the record under its current keys (replacing what it was indexed under)."""
        if self.features(record_id) == f:
            return
        slot = self._new_slot(record_id, f)
        for key in blocking_keys(f):
            self._recent.setdefault(key_hash(key), []).append(slot)
            self._recent_count += 1
        if self._recent_count >= RECENT_POSTINGS:
            self._fold_recent()

    def bulk_load(self, records: Iterable[tuple[str, Features]]) -> None:
        """Index many records at once (the rebuild at start): one sort instead of many folds."""
        hashes, slots = array("Q"), array("I")  # 12 bytes a posting, not two Python ints
        for record_id, f in records:
            slot = self._new_slot(record_id, f)
            for key in blocking_keys(f):
                hashes.append(key_hash(key))
                slots.append(slot)
        if hashes:
            self._add_run(np.frombuffer(hashes, dtype=np.uint64), np.frombuffer(slots, dtype=np.uint32))

    def remove(self, record_id: str) -> None:
        slot = self._slot_of.pop(record_id, None)
        if slot is not None:
            self._ids[slot] = None
            self._packed[slot] = None
            self._alive[slot] = 0

    def candidates(self, f: Features, exclude: str = "") -> list[tuple[str, Features]]:
        """Live records sharing blocking keys with ``f`` (``select_candidates``: keys few enough
        records share, the records sharing the most keys first)."""
        keys = sorted({key_hash(k) for k in blocking_keys(f)})
        if not keys:
            return []
        wanted = np.array(keys, dtype=np.uint64)
        per_key: dict[int, list[int]] = {k: list(self._recent.get(k, ())) for k in keys}
        for hashes, slots in self._runs:
            lo = np.searchsorted(hashes, wanted, "left")
            hi = np.searchsorted(hashes, wanted, "right")
            for k, a, b in zip(keys, lo.tolist(), hi.tolist(), strict=True):
                if b > a:
                    per_key[k].extend(slots[a:b].tolist())
        live = (
            [s for s in set(slot_list) if self._alive[s] and self._ids[s] != exclude]
            # too common even if half its postings were dead: no need to look closer
            for slot_list in per_key.values()
            if len(slot_list) <= 2 * self.max_records_per_key + 1
        )
        found = select_candidates(live, self.max_records_per_key, self.max_candidates)
        out = []
        for slot in found:
            record_id, packed = self._ids[slot], self._packed[slot]
            if record_id is not None and packed is not None:
                out.append((record_id, unpack(self.object_type, packed)))
        return out

    def _fold_recent(self) -> None:
        hashes = [h for h, slots in self._recent.items() for _ in slots]
        slots = [s for ss in self._recent.values() for s in ss]
        self._recent, self._recent_count = {}, 0
        self._add_run(np.array(hashes, dtype=np.uint64), np.array(slots, dtype=np.uint32))

    def _add_run(self, hashes: Hashes, slots: Slots) -> None:
        order = np.argsort(hashes, kind="stable")
        self._runs.append((hashes[order], slots[order]))
        # Merge while the newest run is at least half the size of the one before: few runs, and
        # each posting is re-sorted O(log n) times over its life.
        while len(self._runs) > 1 and len(self._runs[-1][0]) * 2 >= len(self._runs[-2][0]):
            (h2, s2), (h1, s1) = self._runs.pop(), self._runs.pop()
            h, s = np.concatenate([h1, h2]), np.concatenate([s1, s2])
            alive = np.frombuffer(self._alive, dtype=np.uint8)[s].astype(bool)
            h, s = h[alive], s[alive]
            order = np.argsort(h, kind="stable")
            self._runs.append((h[order], s[order]))
