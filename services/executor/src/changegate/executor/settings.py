from __future__ import annotations

from changegate.core.settings import CommonSettings


class ExecutorSettings(CommonSettings):
    http_port: int = 8004
