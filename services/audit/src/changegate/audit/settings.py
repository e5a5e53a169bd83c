from __future__ import annotations

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings
from pydantic import Field


class AuditSettings(CommonSettings, AuthSettings):
    http_port: int = 8001
    checkpoint_every: int = Field(10_000, ge=1, description="sign the chain's head every this many rows")
    checkpoint_seconds: float = Field(
        60.0, gt=0, le=86_400, description="and at least this often (seconds) while rows arrive"
    )
    audit_verify_interval_seconds: float = Field(
        900,
        gt=0,
        description="how often the service verifies the chain from its checkpoints (metrics, alerts)",
    )
    audit_partitions_ahead: int = Field(
        3, ge=1, le=24, description="months of log partitions kept made beyond the current one"
    )
    audit_partitions_interval_seconds: float = Field(
        3600, gt=0, le=86_400, description="how often the service makes the next months' partitions"
    )
