from __future__ import annotations

from changegate.core.settings import CommonSettings
from pydantic import Field

DEV_TOKEN = "dev-reviewer-token"


class ReviewApiSettings(CommonSettings):
    http_port: int = 8000
    review_tokens: dict[str, str] = Field(
        default_factory=lambda: {DEV_TOKEN: "dev-reviewer@changegate.local"},
        description="bearer token -> reviewer identity (JSON); the default is for the dev stack only",
    )
