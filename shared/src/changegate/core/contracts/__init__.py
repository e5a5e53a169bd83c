"""Event contracts: the envelope and the payload models every topic carries."""

from changegate.core.contracts.audit import AuditEntry, AuditMode
from changegate.core.contracts.crm_event import CrmEvent, CrmEventKind, ObjectType
from changegate.core.contracts.decision import Decider, Decision, DecisionOutcome
from changegate.core.contracts.envelope import Envelope, Producer
from changegate.core.contracts.execution import Execution, ExecutionStatus, FieldWrite
from changegate.core.contracts.proposal import (
    FieldChange,
    Proposal,
    ProposalKind,
    ProposalSource,
    Trigger,
)
from changegate.core.contracts.record_change import RecordChange
from changegate.core.contracts.review_request import ReviewRequest
from changegate.core.contracts.signature import Signature

__all__ = [
    "AuditEntry",
    "AuditMode",
    "CrmEvent",
    "CrmEventKind",
    "Decider",
    "Decision",
    "DecisionOutcome",
    "Envelope",
    "Execution",
    "ExecutionStatus",
    "FieldChange",
    "FieldWrite",
    "ObjectType",
    "Producer",
    "Proposal",
    "ProposalKind",
    "ProposalSource",
    "RecordChange",
    "ReviewRequest",
    "Signature",
    "Trigger",
]
