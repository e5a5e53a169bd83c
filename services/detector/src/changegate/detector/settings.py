from __future__ import annotations

from changegate.core.settings import CommonSettings
from changegate.detector.config import LifecycleConfig, OwnerConfig, VerificationConfig
from changegate.detector.matching.scoring import MatchWeights
from pydantic import Field


class DetectorSettings(CommonSettings):
    """Each rule table is JSON in its variable, e.g. CHANGEGATE_OWNER='{"round_robin": ["o-1"]}'."""

    http_port: int = 8002
    enrichment_default_confidence: dict[str, float] = Field(
        default_factory=lambda: {"clay": 0.9, "default": 0.7},
        description="confidence of an enrichment result whose source gives none, per source system",
    )
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    owner: OwnerConfig = Field(default_factory=OwnerConfig)
    verification: VerificationConfig = Field(default_factory=VerificationConfig)
    match_weights: MatchWeights = Field(default_factory=MatchWeights)
    batch_wait_seconds: float = Field(
        0.01, description="how long the agent waits to fill a batch (latency added per hop at most)"
    )
    max_merge_proposals: int = Field(3, ge=1, description="merge proposals per record event, best first")
    default_phone_region: str = Field("US", description="region of phone numbers written without +code")
