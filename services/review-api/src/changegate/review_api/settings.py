from __future__ import annotations

from changegate.core.auth import AuthSettings
from changegate.core.settings import CommonSettings
from pydantic import Field


class ReviewApiSettings(CommonSettings, AuthSettings):
    http_port: int = 8000
    review_decision_rate_limit: str = Field(
        "60/minute",
        description="decisions per reviewer identity (per replica); over it, 429 with Retry-After",
    )
