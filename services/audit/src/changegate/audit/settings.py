from __future__ import annotations

from changegate.core.settings import CommonSettings


class AuditSettings(CommonSettings):
    http_port: int = 8001
