from __future__ import annotations

from changegate.core.settings import CommonSettings
from pydantic import Field


class DetectorSettings(CommonSettings):
    http_port: int = 8002
    enrichment_default_confidence: dict[str, float] = Field(
        default_factory=lambda: {"clay": 0.9, "default": 0.7},
        description="confidence of an enrichment result whose source gives none, per source system",
    )
