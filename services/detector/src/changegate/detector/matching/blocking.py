"""Blocking keys: a record is indexed under a few keys; candidates share at least one.

Keys are strict enough that a key is shared by a handful of records, never by a whole domain or a
common surname: a corporate email domain alone is not a key, a last name only with a postcode or a
company. Keys carry the object type, so contacts and companies never meet."""

from __future__ import annotations

from changegate.detector.matching.normalize import Features

MAX_KEY_LENGTH = 200


def blocking_keys(f: Features) -> set[str]:
    t = f.object_type
    keys: set[str] = set()
    if f.email:
        keys.add(f"{t}:email:{f.email}")
        if f.corporate_domain:
            # the same person at another mailbox style of the same company: j.smith@ vs john.smith@
            keys.add(f"{t}:emlast:{f.last}@{f.corporate_domain}" if f.last else f"{t}:email:{f.email}")
    if f.phone:
        keys.add(f"{t}:phone:{f.phone}")
    if f.last and f.first:
        keys.add(f"{t}:name:{f.first}|{f.last}")
        if f.company:
            keys.add(f"{t}:namecomp:{f.last}|{f.company}")
        if f.postcode:
            keys.add(f"{t}:namepost:{f.last}|{f.postcode}")
    if f.object_type == "company":
        if f.domain:
            keys.add(f"{t}:domain:{f.domain}")
        if f.company:
            keys.add(f"{t}:company:{f.company}")
            if f.postcode:
                keys.add(f"{t}:comppost:{f.company.split(' ')[0]}|{f.postcode}")
    return {k[:MAX_KEY_LENGTH] for k in keys}
