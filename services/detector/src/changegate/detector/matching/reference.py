"""Public name frequencies: the share of people holding a first name or a surname, from the US
census of 1990 as the ``names`` package ships it (public data: 88,799 surnames, 5,494 first names
by sex). A name the model's own term-frequency table does not list takes its frequency from here
rather than counting as rare: a common name the training records happened to lack must not weigh
as if it were unique. A name found in neither gets no term-frequency adjustment at all."""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Literal

Reference = Literal["us-census-1990-first", "us-census-1990-last"]
# A first name's share of all people is the mean of its shares of men and of women.
_FILES: dict[str, tuple[str, ...]] = {
    "us-census-1990-first": ("dist.male.first", "dist.female.first"),
    "us-census-1990-last": ("dist.all.last",),
}


# Percentages are printed to three decimals: a listed name printed as 0.000 is held by fewer than
# 0.0005% of people; it counts as half that.
_BELOW_PRINTED = 0.00025


def _percentages(filename: str) -> dict[str, float]:
    """``NAME  percent  cumulative  rank`` per line."""
    out: dict[str, float] = {}
    for line in resources.files("names").joinpath(filename).read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[0].lower()] = float(parts[1]) or _BELOW_PRINTED
    return out


@cache
def shares(reference: Reference) -> dict[str, float]:
    """Folded name -> share of people holding it (0-1)."""
    files = _FILES[reference]
    out: dict[str, float] = {}
    for filename in files:
        for name, percent in _percentages(filename).items():
            out[name] = out.get(name, 0.0) + percent / 100 / len(files)
    return out
