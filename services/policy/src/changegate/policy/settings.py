from __future__ import annotations

from pathlib import Path

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings
from pydantic import Field


class PolicySettings(CommonSettings, AuthSettings):
    http_port: int = 8003
    policy_file: Path | None = Field(None, description="policy YAML; the mission's default policy when unset")
    policy_poll_seconds: float = Field(2.0, description="how often to look for a changed policy file")
    shadow_policy_file: Path | None = Field(
        None,
        description="a candidate policy to run in shadow from start (its routes recorded, never acted on);"
        " `changegate policy shadow FILE` does the same on a running service",
    )
