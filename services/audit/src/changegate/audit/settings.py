from __future__ import annotations

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings
from pydantic import Field


class AuditSettings(CommonSettings, AuthSettings):
    http_port: int = 8001
    audit_verify_interval_seconds: float = Field(
        900, gt=0, description="how often the service verifies the whole hash chain (metrics, alerts)"
    )
