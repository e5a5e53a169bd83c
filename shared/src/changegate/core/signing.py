"""The bus is a trust boundary: proposals, review requests, decisions and executions are signed by
the service that made them (Ed25519 over the RFC 8785 canonical JSON of the model without its
signature), and consumers accept only what a trusted key signed and what that signer may make.

Who may sign what is fixed here, not configurable: the detector signs proposals (and
supersessions); policy signs its routes — review requests, rejections, and auto-approvals of
exactly the proposal's changes, never of a change the field-risk table gives to a human; review-api
signs human decisions (and expiries); the executor signs executions, and the proposal and review
request it sends back to review after a compare-and-set conflict; audit signs its checkpoints of the
chain."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from changegate.core import canonical as canonical_json
from changegate.core import field_risk
from changegate.core.contracts import (
    AuditCheckpoint,
    Decision,
    DecisionOutcome,
    Execution,
    Proposal,
    ProposalKind,
    ReviewRequest,
    Signature,
)
from changegate.core.errors import MessageRefusedError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import Counter
from pydantic import BaseModel, Field

Signed = TypeVar("Signed", Decision, Execution, Proposal, ReviewRequest, AuditCheckpoint)

SIGNERS = ("policy", "review-api", "detector", "executor", "audit")
# Who may sign a proposal: the detector; the executor only its re-proposals after a conflict; audit
# only a revert of an entry of its log (always sent to a human, never auto-approved).
PROPOSAL_SIGNERS = frozenset({"detector", "executor", "audit"})
REPROPOSAL_PREFIX = "conflict:"  # the source event id of the executor's re-proposals
REVERT_PREFIX = "revert:"  # the source event id of audit's revert proposals: revert:<seq>

REFUSED = Counter(
    "changegate_signature_refusals_total",
    "Messages refused on the bus: unsigned, bad signature, unknown key, signer not allowed, or "
    "what no signer may decide (a human-only change auto-approved, changes not the proposal's, …)",
    ["event_type", "reason"],
)
Refusal = tuple[str, str]  # (reason: a dead letter's and the counter's label, detail)


class SignatureRefusedError(MessageRefusedError):
    """Unsigned, badly signed, or signed by a service that may not: dead-lettered with the reason."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TrustedKey(BaseModel):
    signer: str = Field(description="the service that holds the private key: " + ", ".join(SIGNERS))
    public_key: str = Field(description="Ed25519 public key, 32 bytes base64url")


@dataclass(frozen=True)
class SigningKey:
    """A service's private key: ``<key id>:<32-byte seed, base64url>`` in settings."""

    key_id: str
    signer: str
    private: Ed25519PrivateKey

    @classmethod
    def parse(cls, text: str, signer: str) -> SigningKey:
        key_id, sep, seed = text.partition(":")
        if not sep or not key_id:
            raise ValueError("a signing key is '<key id>:<seed, base64url>'")
        return cls(key_id, signer, Ed25519PrivateKey.from_private_bytes(_unb64(seed)))

    @classmethod
    def generate(cls, key_id: str, signer: str) -> SigningKey:
        return cls(key_id, signer, Ed25519PrivateKey.generate())

    def setting(self) -> str:
        """The value of CHANGEGATE_SIGNING_KEY for this key."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"{self.key_id}:{_b64(raw)}"

    def trusted(self) -> TrustedKey:
        """The entry of CHANGEGATE_TRUSTED_KEYS that lets others verify this key."""
        public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return TrustedKey(signer=self.signer, public_key=_b64(public))

    @functools.cached_property
    def _public(self) -> bytes:
        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    def sign(self, model: Signed) -> Signed:
        forms: dict[int, bytes] = {}
        _forms(model, forms, held=False)
        data = forms[id(model)]
        value = self.private.sign(data)
        _remember(self._public, value, data)  # what this process signed needs no verifying here
        signature = Signature(key_id=self.key_id, signer=self.signer, value=_b64(value))
        return model.model_copy(update={"signature": signature})


def canonical(model: BaseModel) -> bytes:
    """What is signed: the model's JSON without its signature, in RFC 8785 canonical form."""
    return canonical_json.dumps(model.model_dump(mode="json", exclude={"signature"}))


# Signed models that hold another signed model, and the field that holds it.
_NESTED: dict[type[BaseModel], str] = {Execution: "decision", Decision: "proposal", ReviewRequest: "proposal"}


def _forms(model: BaseModel, out: dict[int, bytes], held: bool = True) -> bytes:
    """``canonical`` of ``model`` and of every signed model it holds, each serialised once: theirs go
    to ``out`` by id; the model's whole canonical JSON (signature included) is returned, for the
    model that holds it (``held``; else not serialised: empty). RFC 8785 serialises an object
    member independently of the object around it, so a held model's JSON is put in its place in
    its holder's."""
    nested = _NESTED.get(type(model))
    dumped = model.model_dump(mode="json", exclude={nested} if nested else None)
    marker = b""
    if nested:
        inner = _forms(getattr(model, nested), out)
        token = secrets.token_hex(16)  # unguessable: no content can hold it
        dumped[nested] = token
        marker = f'"{token}"'.encode()
    signature = dumped.pop("signature", None)
    without = canonical_json.dumps(dumped)
    out[id(model)] = without.replace(marker, inner, 1) if marker else without
    if not held:
        return b""
    dumped["signature"] = signature
    whole = canonical_json.dumps(dumped)
    return whole.replace(marker, inner, 1) if marker else whole


# Verified signatures: (public key, signature) -> sha256 of what it signs. A signature found here
# over the same bytes again is as good as verified; the process verifies each one once (a decision
# on its topic, then inside its execution), and trusts what it signed itself.
_VERIFIED: dict[tuple[bytes, bytes], bytes] = {}
_VERIFIED_MAX = 100_000


def _remember(public: bytes, signature: bytes, data: bytes) -> None:
    if len(_VERIFIED) >= _VERIFIED_MAX:
        del _VERIFIED[next(iter(_VERIFIED))]  # the oldest
    _VERIFIED[(public, signature)] = hashlib.sha256(data).digest()


def may_sign(signer: str, decision: Decision) -> str | None:
    """None if ``signer`` may make this decision, else why not."""
    refusal = decision_refusal(signer, decision)
    return None if refusal is None else refusal[1]


def decision_refusal(
    signer: str, decision: Decision, fields: field_risk.FieldTable | None = None
) -> Refusal | None:
    """Why ``signer`` may not make this decision (None: it may). Beyond who may sign what, a decision
    cannot change what it decides: an approval carries the proposal's own changes (a human may
    change the proposed values, never which fields or from what), and no policy auto-approves
    what the field-risk table gives to a human."""
    outcome, by = decision.outcome, decision.decided_by.kind
    if signer == "review-api":
        human = by == "human" and outcome in {
            DecisionOutcome.APPROVED,
            DecisionOutcome.APPROVED_WITH_CHANGES,
            DecisionOutcome.REJECTED,
        }
        if not (human or (by == "system" and outcome is DecisionOutcome.EXPIRED)):
            return "signer_not_allowed", f"review-api may not sign a {by} {outcome.value} decision"
        return changes_refusal(decision)
    if signer == "policy":
        if by != "policy" or outcome not in {DecisionOutcome.AUTO_APPROVED, DecisionOutcome.REJECTED}:
            return "signer_not_allowed", f"policy may not sign a {by} {outcome.value} decision"
        if not outcome.executes:
            return None
        if decision.proposal.signature and decision.proposal.signature.signer == "audit":  # a revert
            return "signer_not_allowed", "policy may not auto-approve a proposal of audit"
        return changes_refusal(decision) or (fields or field_risk.table()).auto_apply_refusal(
            decision.proposal, decision.final_changes
        )
    if signer == "detector":
        if by == "system" and outcome is DecisionOutcome.SUPERSEDED:
            return None
        return (
            "signer_not_allowed",
            f"the detector may only supersede, not sign a {by} {outcome.value} decision",
        )
    return "signer_not_allowed", f"{signer} may not sign decisions"


def changes_refusal(decision: Decision) -> Refusal | None:
    """An approval applies the proposal's changes; approved with changes, other proposed values for
    the same fields from the same previous values."""
    final, proposed = decision.final_changes, decision.proposal.changes
    if decision.outcome is DecisionOutcome.APPROVED_WITH_CHANGES:
        if [(c.field, c.previous) for c in final] == [(c.field, c.previous) for c in proposed]:
            return None
        return "changes_differ", "an approval with changes may change proposed values only"
    if decision.outcome.executes and final != proposed:
        return "changes_differ", f"an {decision.outcome.value} decision must apply the proposal's changes"
    return None


def proposal_refusal(signer: str, proposal: Proposal) -> Refusal | None:
    """Why ``signer`` may not sign this proposal (None: it may)."""
    if signer == "detector":
        return None
    if signer == "executor":
        if proposal.source.event_id.startswith(REPROPOSAL_PREFIX):
            return None
        return "signer_not_allowed", "the executor signs only its re-proposals after a conflict"
    if signer == "audit":
        if proposal.source.event_id.startswith(REVERT_PREFIX) and proposal.kind is not ProposalKind.MERGE:
            return None
        return "signer_not_allowed", "audit signs only reverts of entries of its log (never of a merge)"
    return "signer_not_allowed", f"{signer} may not sign proposals"


def review_request_refusal(signer: str, request: ReviewRequest, proposal_signer: str) -> Refusal | None:
    """Policy routes the detector's proposals to review; the executor sends its own re-proposals,
    audit its reverts."""
    routed_by = request.routed_by.kind
    if signer == "policy" and routed_by == "policy" and proposal_signer == "detector":
        return None
    if signer in ("executor", "audit") and routed_by == "system" and proposal_signer == signer:
        return None
    return (
        "signer_not_allowed",
        f"{signer} may not send a {proposal_signer}'s proposal to review as {routed_by}",
    )


class Verifier:
    """Checks signatures against the trusted keys (CHANGEGATE_TRUSTED_KEYS) and signers' rights."""

    def __init__(self, trusted: dict[str, TrustedKey], fields: field_risk.FieldTable | None = None) -> None:
        self.fields = fields or field_risk.table()
        self.keys = {
            key_id: (t.signer, Ed25519PublicKey.from_public_bytes(_unb64(t.public_key)))
            for key_id, t in trusted.items()
        }
        self._raw = {key_id: _unb64(t.public_key) for key_id, t in trusted.items()}
        self._canonical: dict[int, bytes] = {}  # of the message being checked, by model id

    @contextlib.contextmanager
    def _message(self, model: BaseModel) -> Iterator[None]:
        """While a message is checked, the canonical forms of it and what it holds, computed once."""
        if self._canonical:  # a model inside the message being checked
            yield
            return
        _forms(model, self._canonical, held=False)
        try:
            yield
        finally:
            self._canonical.clear()

    def _signer(
        self,
        model: BaseModel,
        signature: Signature | None,
        event_type: str,
        prefix: str = "",
        count: bool = True,
    ) -> str:
        if signature is None:
            raise self._refuse(event_type, prefix + "unsigned", "no signature", count)
        known = self.keys.get(signature.key_id)
        if known is None:
            raise self._refuse(
                event_type, prefix + "unknown_key", f"key {signature.key_id!r} is not trusted", count
            )
        signer, public = known
        if signer != signature.signer:
            raise self._refuse(
                event_type, prefix + "bad_signature", f"key {signature.key_id!r} belongs to {signer}", count
            )
        data = self._canonical.get(id(model)) or canonical(model)
        try:
            value, raw = _unb64(signature.value), self._raw[signature.key_id]
            if _VERIFIED.get((raw, value)) != hashlib.sha256(data).digest():
                public.verify(value, data)
                _remember(raw, value, data)
        except (InvalidSignature, ValueError) as exc:
            raise self._refuse(
                event_type, prefix + "bad_signature", "the signature does not match the content", count
            ) from exc
        return signer

    def decision(self, decision: Decision) -> str:
        """The signer of a decision it may make; else SignatureRefusedError. What executes must
        also be a proposal its producer signed: a signer of decisions cannot invent the change."""
        with self._message(decision):
            return self._decision(decision)

    def _decision(self, decision: Decision) -> str:
        signer = self._signer(decision, decision.signature, "decision")
        refusal = decision_refusal(signer, decision, self.fields)
        if refusal is not None:
            raise self._refuse("decision", *refusal)
        if decision.outcome.executes:
            self.proposal(decision.proposal, event_type="decision")
        return signer

    def proposal(
        self,
        proposal: Proposal,
        signers: frozenset[str] = PROPOSAL_SIGNERS,
        event_type: str = "proposal",
        count: bool = True,
    ) -> str:
        """The signer of a proposal, one of ``signers``, whose kind changes only its own fields.
        ``count=False`` when the same message will be checked again alone (a batch that fails is
        retried message by message), so a refusal is counted once."""
        prefix = "" if event_type == "proposal" else "proposal_"
        with self._message(proposal):
            signer = self._signer(proposal, proposal.signature, event_type, prefix, count)
        refusal = proposal_refusal(signer, proposal)
        if refusal is None and signer not in signers:
            refusal = "signer_not_allowed", f"a proposal signed by {signer} is not accepted here"
        if refusal is None:
            wrong = self.fields.kind_refusal(proposal.kind, proposal.changes)
            refusal = ("fields_not_of_kind", wrong) if wrong else None
        if refusal is not None:
            raise self._refuse(event_type, prefix + refusal[0], refusal[1], count)
        return signer

    def review_request(self, request: ReviewRequest) -> str:
        """A review request signed by policy (a detector's proposal) or by the executor (its own
        re-proposal after a conflict)."""
        with self._message(request):
            signer = self._signer(request, request.signature, "review_request")
            proposal_signer = self.proposal(request.proposal, event_type="review_request")
        refusal = review_request_refusal(signer, request, proposal_signer)
        if refusal is not None:
            raise self._refuse("review_request", *refusal)
        return signer

    def execution(self, execution: Execution) -> str:
        """An execution signed by the executor, of a decision properly signed."""
        with self._message(execution):
            signer = self._signer(execution, execution.signature, "execution")
            if signer != "executor":
                raise self._refuse("execution", "signer_not_allowed", f"{signer} may not sign executions")
            self.decision(execution.decision)
        return signer

    def checkpoint(self, checkpoint: AuditCheckpoint) -> str:
        """A checkpoint of the audit chain, signed by audit."""
        with self._message(checkpoint):
            signer = self._signer(checkpoint, checkpoint.signature, "audit_checkpoint")
        if signer != "audit":
            raise self._refuse("audit_checkpoint", "signer_not_allowed", f"{signer} may not sign checkpoints")
        return signer

    @staticmethod
    def _refuse(event_type: str, reason: str, detail: str, count: bool = True) -> SignatureRefusedError:
        if count:
            REFUSED.labels(event_type=event_type, reason=reason).inc()
        return SignatureRefusedError(reason, detail)


def dev_keys(key_id: str = "dev") -> tuple[dict[str, str], dict[str, TrustedKey]]:
    """Fresh keys for a local stack: each signer's CHANGEGATE_SIGNING_KEY, and the trusted keys."""
    keys = {signer: SigningKey.generate(f"{signer}-{key_id}", signer) for signer in SIGNERS}
    return (
        {signer: key.setting() for signer, key in keys.items()},
        {key.key_id: key.trusted() for key in keys.values()},
    )
