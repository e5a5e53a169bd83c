from __future__ import annotations

from typing import Self

from changegate.core.field_risk import FieldClass, FieldTable
from changegate.core.settings import CommonSettings
from changegate.detector import reliability
from changegate.detector.config import LifecycleConfig, OwnerConfig, VerificationConfig
from changegate.detector.matching.engine import DEFAULT_CLUSTER_FLOOR, DEFAULT_REVIEW_THRESHOLD
from pydantic import Field, FilePath, model_validator


class DetectorSettings(CommonSettings):
    """Each rule table is JSON in its variable, e.g. CHANGEGATE_OWNER='{"round_robin": ["o-1"]}'."""

    http_port: int = 8002
    enrichment_default_confidence: dict[str, float] = Field(
        default_factory=lambda: {"clay": 0.9, "default": 0.7},
        description="confidence of an enrichment result whose source gives none, per source system",
    )
    reliability_file: FilePath | None = Field(
        None,
        description="the reliability table (`changegate detector calibrate`): how reviewers decided"
        " proposals alike, which corrects each detector's prior confidence; unset: every confidence is"
        " its prior (a source's claim, the score, the match model's, or the configured value)",
    )
    reliability_learn_seconds: float = Field(
        0,
        ge=0,
        le=86_400,
        description="rebuild the reliability table this often from the human decisions the detector has"
        " recorded since the file's learned_at (added to the file's counts); 0: the file's table only",
    )
    lifecycle: LifecycleConfig = Field(default_factory=LifecycleConfig)
    owner: OwnerConfig = Field(default_factory=OwnerConfig)
    verification: VerificationConfig = Field(default_factory=VerificationConfig)
    match_model: FilePath | None = Field(
        None,
        description="the duplicate finder's model file (`changegate detector train`); unset: the shipped"
        " default, trained without labels on generated data",
    )
    match_review_threshold: float = Field(
        DEFAULT_REVIEW_THRESHOLD, gt=0, lt=1, description="match probability from which a merge is proposed"
    )
    match_cluster_floor: float = Field(
        DEFAULT_CLUSTER_FLOOR,
        gt=0,
        lt=1,
        description="match probability every pair inside a proposed cluster must reach (no transitive joins"
        " of records that disagree); at most the review threshold",
    )
    max_merge_proposals: int = Field(
        20,
        ge=1,
        description="candidates (at least the cluster floor) an event's cluster decision weighs, best first",
    )
    default_phone_region: str = Field("US", description="region of phone numbers written without +code")

    @model_validator(mode="after")
    def _reliability_table_is_usable(self) -> Self:
        try:
            reliability.load(self.reliability_file)
        except reliability.ReliabilityError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @model_validator(mode="after")
    def _floor_below_threshold(self) -> Self:
        if self.match_cluster_floor > self.match_review_threshold:
            raise ValueError(
                f"match_cluster_floor ({self.match_cluster_floor}) is above match_review_threshold"
                f" ({self.match_review_threshold})"
            )
        return self

    def record_properties(self) -> list[str]:
        """The CRM properties the detectors read: what an import loads and a CRM's webhook
        subscription should report changes of."""
        from changegate.detector.dedup import REVIEW_FIELDS

        configured = [
            self.owner.owner_field,
            self.owner.country_field,
            self.owner.state_field,
            self.lifecycle.stage_field,
            self.verification.email_field,
            self.verification.status_field,
        ]
        identity = ["mobilephone", "website", "name", "domain", "createdate"]
        return list(dict.fromkeys([*REVIEW_FIELDS, *identity, *configured]))

    def field_risk_refusals(self, table: FieldTable) -> list[str]:
        """What the field-risk table does not know the detector's fields as: their proposals would
        be refused (a kind changes only its own fields), so the detector refuses to start."""
        wanted = {
            "CHANGEGATE_OWNER owner_field": (self.owner.owner_field, FieldClass.OWNER),
            "CHANGEGATE_LIFECYCLE stage_field": (self.lifecycle.stage_field, FieldClass.LIFECYCLE_STAGE),
            "CHANGEGATE_VERIFICATION status_field": (self.verification.status_field, FieldClass.EMAIL_STATUS),
        }
        return [
            f"{setting} {field!r} is not in the {cls.value} class: declare it in CHANGEGATE_CRM_FIELDS"
            f' (e.g. {{"{field}": "{cls.value}"}}), the same for every service'
            for setting, (field, cls) in wanted.items()
            if table.classify(field) is not cls
        ]
