"""Why a webhook request is refused. Each refusal has a status, a reason (a metric label from a
small fixed set, never input) and a detail for the sender; nothing is produced for any of them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class RefusedError(Exception):
    """A request answered with a 4xx (or 503) problem."""

    status = 400

    def __init__(self, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.headers = reason, detail, headers or {}

    def errors(self) -> list[dict[str, Any]] | None:
        return None


class SignatureError(RefusedError):
    """Not provably from the source: signature or token missing, wrong, or stale (401)."""

    status = 401


class PayloadError(RefusedError):
    """Input the mapping cannot read: not JSON, or a field missing or of the wrong type (422,
    naming the field)."""

    status = 422

    def __init__(self, loc: Sequence[str | int], msg: str, type_: str = "value_error") -> None:
        self.loc, self.msg, self.type = list(loc), msg, type_
        super().__init__("invalid_payload", f"{'.'.join(str(p) for p in self.loc)}: {msg}")

    def errors(self) -> list[dict[str, Any]] | None:
        return [{"loc": self.loc, "msg": self.msg, "type": self.type}]


class NotFoundError(RefusedError):
    status = 404


class TooLargeError(RefusedError):
    status = 413


class BrokerUnavailableError(RefusedError):
    """The broker did not acknowledge every event in time: retry later (503 with Retry-After)."""

    status = 503
