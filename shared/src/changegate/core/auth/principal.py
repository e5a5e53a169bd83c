"""Who is asking, and what they may do: roles, optional scopes per review queue and proposal kind."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: ``subject`` is the identity recorded on what they do."""

    subject: str
    grants: tuple[Grant, ...] = field(default_factory=tuple)
    via: str = "token"  # "oidc" or "token"

    def may(self, role: Role, queue: str | None = None, kind: str | None = None) -> bool:
        return any(g.covers(role, queue, kind) for g in self.grants)

    @property
    def roles(self) -> list[str]:
        return sorted({g.role.value for g in self.grants})
