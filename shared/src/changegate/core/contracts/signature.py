"""Signature: who vouches for a decision or an execution on the bus (Ed25519 over its canonical
JSON, RFC 8785, without the signature itself)."""

from __future__ import annotations

from typing import Literal

from changegate.core.contracts.base import Contract
from pydantic import Field


class Signature(Contract):
    key_id: str = Field(min_length=1, max_length=128, description="which signing key (rotation by key id)")
    signer: str = Field(min_length=1, max_length=64, description="the service whose key it is")
    algorithm: Literal["Ed25519"] = "Ed25519"
    value: str = Field(
        pattern=r"^[A-Za-z0-9_-]{86}$", description="the 64-byte signature, base64url without padding"
    )
