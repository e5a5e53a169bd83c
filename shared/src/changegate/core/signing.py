"""The bus is a trust boundary: decisions and executions are signed by the service that made them
(Ed25519 over the RFC 8785 canonical JSON of the model without its signature), and consumers accept
only what a trusted key signed and what that signer may decide.

Who may sign what is fixed here, not configurable: review-api signs human decisions (and expiries),
policy signs its own auto-approvals and rejections but never an executable merge or owner change,
the detector signs only supersessions, the executor only executions."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TypeVar

from changegate.core import canonical as canonical_json
from changegate.core.contracts import Decision, DecisionOutcome, Execution, ProposalKind, Signature
from changegate.core.errors import MessageRefusedError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import Counter
from pydantic import BaseModel, Field

Signed = TypeVar("Signed", Decision, Execution)

# Kinds a human must approve, whatever a policy says.
HUMAN_ONLY_KINDS = frozenset({ProposalKind.MERGE, ProposalKind.OWNER_REASSIGNMENT})
SIGNERS = ("policy", "review-api", "detector", "executor")

REFUSED = Counter(
    "changegate_signature_refusals_total",
    "Decisions and executions refused: unsigned, bad signature, unknown key, signer not allowed",
    ["event_type", "reason"],
)


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

    def sign(self, model: Signed) -> Signed:
        value = self.private.sign(canonical(model))
        signature = Signature(key_id=self.key_id, signer=self.signer, value=_b64(value))
        return model.model_copy(update={"signature": signature})


def canonical(model: BaseModel) -> bytes:
    """What is signed: the model's JSON without its signature, in RFC 8785 canonical form."""
    return canonical_json.dumps(model.model_dump(mode="json", exclude={"signature"}))


def may_sign(signer: str, decision: Decision) -> str | None:
    """None if ``signer`` may make this decision, else why not."""
    outcome, kind, by = decision.outcome, decision.proposal.kind, decision.decided_by.kind
    if signer == "review-api":
        human = by == "human" and outcome in {
            DecisionOutcome.APPROVED,
            DecisionOutcome.APPROVED_WITH_CHANGES,
            DecisionOutcome.REJECTED,
        }
        if human or (by == "system" and outcome is DecisionOutcome.EXPIRED):
            return None
        return f"review-api may not sign a {by} {outcome.value} decision"
    if signer == "policy":
        if by != "policy" or outcome not in {DecisionOutcome.AUTO_APPROVED, DecisionOutcome.REJECTED}:
            return f"policy may not sign a {by} {outcome.value} decision"
        if outcome.executes and kind in HUMAN_ONLY_KINDS:
            return f"policy may never approve a {kind.value}: a human must"
        return None
    if signer == "detector":
        if by == "system" and outcome is DecisionOutcome.SUPERSEDED:
            return None
        return f"the detector may only supersede, not sign a {by} {outcome.value} decision"
    return f"{signer} may not sign decisions"


class Verifier:
    """Checks signatures against the trusted keys (CHANGEGATE_TRUSTED_KEYS) and signers' rights."""

    def __init__(self, trusted: dict[str, TrustedKey]) -> None:
        self.keys = {
            key_id: (t.signer, Ed25519PublicKey.from_public_bytes(_unb64(t.public_key)))
            for key_id, t in trusted.items()
        }

    def _signer(self, model: BaseModel, signature: Signature | None, event_type: str) -> str:
        if signature is None:
            raise self._refuse(event_type, "unsigned", "no signature")
        known = self.keys.get(signature.key_id)
        if known is None:
            raise self._refuse(event_type, "unknown_key", f"key {signature.key_id!r} is not trusted")
        signer, public = known
        if signer != signature.signer:
            raise self._refuse(event_type, "bad_signature", f"key {signature.key_id!r} belongs to {signer}")
        try:
            public.verify(_unb64(signature.value), canonical(model))
        except (InvalidSignature, ValueError) as exc:
            raise self._refuse(
                event_type, "bad_signature", "the signature does not match the content"
            ) from exc
        return signer

    def decision(self, decision: Decision) -> str:
        """The signer of a decision it may make; else SignatureRefusedError."""
        signer = self._signer(decision, decision.signature, "decision")
        why_not = may_sign(signer, decision)
        if why_not is not None:
            raise self._refuse("decision", "signer_not_allowed", why_not)
        return signer

    def execution(self, execution: Execution) -> str:
        """An execution signed by the executor, of a decision properly signed."""
        signer = self._signer(execution, execution.signature, "execution")
        if signer != "executor":
            raise self._refuse("execution", "signer_not_allowed", f"{signer} may not sign executions")
        self.decision(execution.decision)
        return signer

    @staticmethod
    def _refuse(event_type: str, reason: str, detail: str) -> SignatureRefusedError:
        REFUSED.labels(event_type=event_type, reason=reason).inc()
        return SignatureRefusedError(reason, detail)


def dev_keys(key_id: str = "dev") -> tuple[dict[str, str], dict[str, TrustedKey]]:
    """Fresh keys for a local stack: each signer's CHANGEGATE_SIGNING_KEY, and the trusted keys."""
    keys = {signer: SigningKey.generate(f"{signer}-{key_id}", signer) for signer in SIGNERS}
    return (
        {signer: key.setting() for signer, key in keys.items()},
        {key.key_id: key.trusted() for key in keys.values()},
    )
