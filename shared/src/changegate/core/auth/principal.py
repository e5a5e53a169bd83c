"""Who is asking, and what they may do: roles, optional scopes per review queue and proposal kind."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"  # read the review queue and the audit log
    REVIEWER = "reviewer"  # … and decide proposals
    ADMIN = "admin"  # … and bulk actions, tokens, settings

    def includes(self, other: Role) -> bool:
        return _RANK[self] >= _RANK[other]


_RANK = {Role.VIEWER: 0, Role.REVIEWER: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Grant:
    """A role, limited to some review queues and proposal kinds (None: all of them)."""

    role: Role
    queues: frozenset[str] | None = None
    kinds: frozenset[str] | None = None

    def covers(self, role: Role, queue: str | None = None, kind: str | None = None) -> bool:
        return (
            self.role.includes(role)
            and (queue is None or self.queues is None or queue in self.queues)
            and (kind is None or self.kinds is None or kind in self.kinds)
        )


def normalize_identity(identity: str) -> str:
    """One spelling per identity: Unicode NFKC, trimmed, case-folded (``Self-X@Example.com`` and
    ``self-x@example.com`` are one person)."""
    return unicodedata.normalize("NFKC", identity).strip().casefold()


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``subject`` is the identity recorded on what they do, normalised
    here, where every principal is made (``normalize_identity``)."""

    subject: str
    grants: tuple[Grant, ...] = field(default_factory=tuple)
    via: str = "token"  # "oidc" or "token"

    def __post_init__(self) -> None:
        object.__setattr__(self, "subject", normalize_identity(self.subject))

    def is_(self, identity: str | None) -> bool:
        """Whether ``identity`` (e.g. who requested a change) is this principal, in any spelling."""
        return identity is not None and normalize_identity(identity) == self.subject

    def may(self, role: Role, queue: str | None = None, kind: str | None = None) -> bool:
        return any(g.covers(role, queue, kind) for g in self.grants)

    def reads(self, role: Role = Role.VIEWER) -> list[Grant] | None:
        """The grants that let it read with ``role``; None when one covers every queue and kind."""
        grants = [g for g in self.grants if g.role.includes(role)]
        if any(g.queues is None and g.kinds is None for g in grants):
            return None
        return grants

    @property
    def roles(self) -> list[str]:
        return sorted({g.role.value for g in self.grants})
