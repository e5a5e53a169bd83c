from __future__ import annotations

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings


class AuditSettings(CommonSettings, AuthSettings):
    http_port: int = 8001
