"""Signed decisions and executions: what verifies, what does not, and who may sign what."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from changegate.cli.main import app
from changegate.core import canonical as canonical_json
from changegate.core import signing as signing_module
from changegate.core.contracts import (
    AuditCheckpoint,
    Decider,
    Decision,
    DecisionOutcome,
    Execution,
    FieldChange,
    Proposal,
    ProposalKind,
    ReviewRequest,
)
from changegate.core.signing import (
    REPROPOSAL_PREFIX,
    SignatureRefusedError,
    SigningKey,
    TrustedKey,
    Verifier,
    _b64,
    _forms,
    _unb64,
    canonical,
    dev_keys,
    may_sign,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from prometheus_client import REGISTRY
from pydantic import BaseModel
from typer.testing import CliRunner

KEYS = {
    s: SigningKey.generate(f"{s}-1", s) for s in ("policy", "review-api", "detector", "executor", "audit")
}
VERIFIER = Verifier({k.key_id: k.trusted() for k in KEYS.values()})
HUMAN = Decider(kind="human", identity="alice@example.com")
SYSTEM = Decider(kind="system", identity="system:x")


def _refused(reason: str, call: Callable[[], object]) -> None:
    with pytest.raises(SignatureRefusedError) as info:
        call()
    assert info.value.reason == reason


@pytest.fixture
def signed_decision(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> Callable[..., Decision]:
    """``make_decision`` of a proposal the detector signed (what executes must be one)."""

    def build(kind: ProposalKind = ProposalKind.FIELD_UPDATE, **overrides: object) -> Decision:
        return make_decision(proposal=KEYS["detector"].sign(make_proposal(kind=kind)), **overrides)

    return build


def test_a_signed_decision_verifies_and_names_its_signer(signed_decision: Callable[..., Decision]) -> None:
    decision = KEYS["policy"].sign(signed_decision())
    assert decision.signature is not None
    assert decision.signature.key_id == "policy-1"
    assert VERIFIER.decision(decision) == "policy"
    # What is signed is the content without the signature, canonically: key order does not matter.
    assert canonical(decision) == canonical(decision.model_copy(update={"signature": None}))


def test_every_way_of_breaking_a_signature_is_refused(make_decision: Callable[..., Decision]) -> None:
    decision = KEYS["policy"].sign(make_decision())
    assert decision.signature is not None
    _refused("unsigned", lambda: VERIFIER.decision(decision.model_copy(update={"signature": None})))
    tampered = decision.model_copy(update={"explanation": "something else"})
    _refused("bad_signature", lambda: VERIFIER.decision(tampered))
    changed_proposal = decision.model_copy(
        update={"proposal": decision.proposal.model_copy(update={"confidence": 0.1})}
    )
    _refused("bad_signature", lambda: VERIFIER.decision(changed_proposal))
    stolen = SigningKey.generate("policy-1", "policy").sign(decision)  # a trusted id, another key
    _refused("bad_signature", lambda: VERIFIER.decision(stolen))
    unknown = SigningKey.generate("policy-9", "policy").sign(decision)
    _refused("unknown_key", lambda: VERIFIER.decision(unknown))
    relabelled = decision.model_copy(
        update={"signature": decision.signature.model_copy(update={"signer": "review-api"})}
    )
    _refused("bad_signature", lambda: VERIFIER.decision(relabelled))  # the key belongs to policy


NOT_ALLOWED = "signer_not_allowed"


@pytest.mark.parametrize(
    ("signer", "kind", "outcome", "by", "refusal"),
    [
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.AUTO_APPROVED, "policy", None),
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.REJECTED, "policy", None),
        ("policy", ProposalKind.MERGE, DecisionOutcome.AUTO_APPROVED, "policy", "human_required"),
        (
            "policy",
            ProposalKind.OWNER_REASSIGNMENT,
            DecisionOutcome.AUTO_APPROVED,
            "policy",
            "human_required",
        ),
        ("policy", ProposalKind.MERGE, DecisionOutcome.REJECTED, "policy", None),
        (
            "policy",
            ProposalKind.LIFECYCLE_TRANSITION,
            DecisionOutcome.AUTO_APPROVED,
            "policy",
            "guarded_field",
        ),
        ("policy", ProposalKind.EMAIL_VERIFICATION, DecisionOutcome.AUTO_APPROVED, "policy", None),
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.APPROVED, "human", NOT_ALLOWED),
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.SUPERSEDED, "system", NOT_ALLOWED),
        ("review-api", ProposalKind.MERGE, DecisionOutcome.APPROVED, "human", None),
        ("review-api", ProposalKind.OWNER_REASSIGNMENT, DecisionOutcome.APPROVED_WITH_CHANGES, "human", None),
        ("review-api", ProposalKind.FIELD_UPDATE, DecisionOutcome.REJECTED, "human", None),
        ("review-api", ProposalKind.FIELD_UPDATE, DecisionOutcome.EXPIRED, "system", None),
        ("review-api", ProposalKind.FIELD_UPDATE, DecisionOutcome.AUTO_APPROVED, "policy", NOT_ALLOWED),
        ("review-api", ProposalKind.FIELD_UPDATE, DecisionOutcome.APPROVED, "system", NOT_ALLOWED),
        ("review-api", ProposalKind.FIELD_UPDATE, DecisionOutcome.SUPERSEDED, "system", NOT_ALLOWED),
        ("detector", ProposalKind.FIELD_UPDATE, DecisionOutcome.SUPERSEDED, "system", None),
        ("detector", ProposalKind.FIELD_UPDATE, DecisionOutcome.APPROVED, "human", NOT_ALLOWED),
        ("detector", ProposalKind.FIELD_UPDATE, DecisionOutcome.EXPIRED, "system", NOT_ALLOWED),
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.REJECTED, "human", NOT_ALLOWED),
        ("policy", ProposalKind.FIELD_UPDATE, DecisionOutcome.AUTO_APPROVED, "system", NOT_ALLOWED),
        ("executor", ProposalKind.FIELD_UPDATE, DecisionOutcome.APPROVED, "human", NOT_ALLOWED),
    ],
)
def test_who_may_sign_what(
    signed_decision: Callable[..., Decision],
    policy_decider: Decider,
    signer: str,
    kind: ProposalKind,
    outcome: DecisionOutcome,
    by: str,
    refusal: str | None,
) -> None:
    decider = {"policy": policy_decider, "human": HUMAN, "system": SYSTEM}[by]
    decision = signed_decision(kind, outcome=outcome, decided_by=decider)
    assert (may_sign(signer, decision) is None) is (refusal is None)
    signed = KEYS[signer].sign(decision)
    if refusal is None:
        assert VERIFIER.decision(signed) == signer
    else:
        _refused(refusal, lambda: VERIFIER.decision(signed))


def test_an_execution_must_be_the_executors_of_a_properly_signed_decision(
    make_execution: Callable[..., Execution],
    make_decision: Callable[..., Decision],
    signed_decision: Callable[..., Decision],
) -> None:
    decision = KEYS["policy"].sign(signed_decision())
    execution = KEYS["executor"].sign(make_execution(decision=decision))
    assert VERIFIER.execution(execution) == "executor"
    _refused("signer_not_allowed", lambda: VERIFIER.execution(KEYS["policy"].sign(execution)))
    unsigned_decision = KEYS["executor"].sign(make_execution(decision=make_decision()))
    _refused("unsigned", lambda: VERIFIER.execution(unsigned_decision))
    new = FieldChange(field="jobtitle", previous=None, proposed="EVIL")
    forged_writes = execution.model_copy(update={"writes": [*execution.writes, new]})
    _refused("bad_signature", lambda: VERIFIER.execution(forged_writes))


def test_a_signing_key_round_trips_through_its_setting() -> None:
    key = KEYS["review-api"]
    again = SigningKey.parse(key.setting(), "review-api")
    assert again.trusted() == key.trusted()
    with pytest.raises(ValueError, match="<key id>:<seed"):
        SigningKey.parse("no-separator", "review-api")


def test_keys_generate_writes_a_folder_per_service_keeps_them_and_rotates(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "a"])
    assert first.exit_code == 0, first.output
    assert (tmp_path / "policy" / "changegate_signing_key").read_text().startswith("policy-a:")
    assert (tmp_path / "audit" / "changegate_signing_key").read_text().startswith("audit-a:")  # checkpoints
    trusted = json.loads((tmp_path / "audit" / "changegate_trusted_keys").read_text())
    assert set(trusted) == {"policy-a", "review-api-a", "detector-a", "executor-a", "audit-a"}
    assert all(TrustedKey.model_validate(v) for v in trusted.values())
    assert oct((tmp_path / "policy" / "changegate_signing_key").stat().st_mode & 0o777) == "0o600"

    kept = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "b"])
    assert "kept" in kept.output
    assert (tmp_path / "policy" / "changegate_signing_key").read_text().startswith("policy-a:")

    rotated = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "b", "--rotate"])
    assert rotated.exit_code == 0, rotated.output
    assert (tmp_path / "policy" / "changegate_signing_key").read_text().startswith("policy-b:")
    trusted = json.loads((tmp_path / "executor" / "changegate_trusted_keys").read_text())
    assert {"policy-a", "policy-b"} <= set(trusted)  # messages signed before the rotation still verify


def test_keys_generate_adds_a_key_for_a_signer_an_upgrade_brought(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "a"]).exit_code == 0
    (tmp_path / "audit" / "changegate_signing_key").unlink()  # keys of a release before audit signed
    again = runner.invoke(app, ["keys", "generate", "--out", str(tmp_path), "--key-id", "b"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "audit" / "changegate_signing_key").read_text().startswith("audit-b:")
    assert (tmp_path / "policy" / "changegate_signing_key").read_text().startswith("policy-a:")
    trusted = json.loads((tmp_path / "detector" / "changegate_trusted_keys").read_text())
    assert {"policy-a", "audit-a", "audit-b"} <= set(trusted)


def _refusals(event_type: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "changegate_signature_refusals_total", {"event_type": event_type, "reason": reason}
    )
    return value or 0.0


def test_each_refusal_is_counted_by_event_type_and_reason(
    make_decision: Callable[..., Decision], make_execution: Callable[..., Execution]
) -> None:
    decision = make_decision()
    before = _refusals("decision", "unsigned")
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.decision(decision)
    assert (info.value.reason, info.value.detail) == ("unsigned", "no signature")
    assert _refusals("decision", "unsigned") == before + 1

    tampered = KEYS["policy"].sign(decision).model_copy(update={"explanation": "x"})
    before = _refusals("decision", "bad_signature")
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.decision(tampered)
    assert info.value.detail == "the signature does not match the content"
    assert _refusals("decision", "bad_signature") == before + 1

    by_detector = KEYS["detector"].sign(decision)  # the detector may only supersede
    before = _refusals("decision", "signer_not_allowed")
    _refused("signer_not_allowed", lambda: VERIFIER.decision(by_detector))
    assert _refusals("decision", "signer_not_allowed") == before + 1

    execution = make_execution(decision=KEYS["policy"].sign(decision))
    before = _refusals("execution", "unsigned")
    _refused("unsigned", lambda: VERIFIER.execution(execution))
    assert _refusals("execution", "unsigned") == before + 1
    before = _refusals("execution", "signer_not_allowed")
    _refused("signer_not_allowed", lambda: VERIFIER.execution(KEYS["policy"].sign(execution)))
    assert _refusals("execution", "signer_not_allowed") == before + 1


@pytest.mark.parametrize("size", range(70))
def test_keys_and_signatures_survive_base64url_without_padding(size: int) -> None:
    data = bytes(range(size))
    assert _unb64(_b64(data)) == data
    assert "=" not in _b64(data)


def test_a_signing_key_cannot_be_altered() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        KEYS["policy"].signer = "review-api"  # type: ignore[misc]


def test_a_signature_names_its_key_and_signer(make_decision: Callable[..., Decision]) -> None:
    signed = KEYS["detector"].sign(make_decision())
    assert signed.signature is not None
    assert (signed.signature.key_id, signed.signature.signer) == ("detector-1", "detector")
    assert signed.model_copy(update={"signature": None}) == make_decision()


def test_a_signing_key_needs_an_id_and_a_separator() -> None:
    for text in (":c2VlZA", "", "just-an-id"):
        with pytest.raises(ValueError, match=r"^a signing key is '<key id>:<seed, base64url>'$"):
            SigningKey.parse(text, "policy")


def test_dev_keys_give_every_signer_a_trusted_key(signed_decision: Callable[..., Decision]) -> None:
    settings, trusted = dev_keys()
    assert set(settings) == {"policy", "review-api", "detector", "executor", "audit"}
    assert set(trusted) == {"policy-dev", "review-api-dev", "detector-dev", "executor-dev", "audit-dev"}
    assert {k: t.signer for k, t in trusted.items()} == {f"{s}-dev": s for s in settings}
    key = SigningKey.parse(settings["policy"], "policy")
    assert key.key_id == "policy-dev"
    detector = SigningKey.parse(settings["detector"], "detector")
    decision = signed_decision()
    decision = decision.model_copy(update={"proposal": detector.sign(decision.proposal)})
    assert Verifier(trusted).decision(key.sign(decision)) == "policy"
    assert set(dev_keys("x")[1]) == {"policy-x", "review-api-x", "detector-x", "executor-x", "audit-x"}


def test_an_executions_decision_must_be_one_its_signer_may_make(
    make_execution: Callable[..., Execution], make_decision: Callable[..., Decision]
) -> None:
    approval = make_decision(outcome=DecisionOutcome.APPROVED, decided_by=HUMAN)
    by_detector = KEYS["detector"].sign(approval)  # the detector may only supersede
    execution = KEYS["executor"].sign(make_execution(decision=by_detector))
    _refused("signer_not_allowed", lambda: VERIFIER.execution(execution))


# --- proposals and review requests ------------------------------------------------------------------


def test_a_proposal_is_the_detectors_or_an_executors_re_proposal(
    make_proposal: Callable[..., Proposal],
) -> None:
    proposal = make_proposal()
    assert VERIFIER.proposal(KEYS["detector"].sign(proposal)) == "detector"
    _refused("unsigned", lambda: VERIFIER.proposal(proposal))
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(KEYS["policy"].sign(proposal)))
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(KEYS["review-api"].sign(proposal)))
    # The executor signs only what it sends back to review after a conflict.
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(KEYS["executor"].sign(proposal)))
    source = proposal.source.model_copy(update={"event_id": f"{REPROPOSAL_PREFIX}d-1"})
    again = KEYS["executor"].sign(proposal.model_copy(update={"source": source}))
    assert VERIFIER.proposal(again) == "executor"
    # Where only the detector's are accepted (policy), a re-proposal is not.
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(again, frozenset({"detector"})))
    tampered = KEYS["detector"].sign(proposal).model_copy(update={"confidence": 1.0})
    _refused("bad_signature", lambda: VERIFIER.proposal(tampered))


def test_a_kind_changes_only_its_own_fields_even_when_signed(make_proposal: Callable[..., Proposal]) -> None:
    owner = FieldChange(field="hubspot_owner_id", previous="owner-a", proposed="owner-evil")
    email = FieldChange(field="email", previous="a@x.example", proposed="attacker@evil.example")
    disguised = KEYS["detector"].sign(
        make_proposal(kind=ProposalKind.LIFECYCLE_TRANSITION, changes=[owner, email])
    )
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.proposal(disguised)
    assert info.value.reason == "fields_not_of_kind"
    assert info.value.detail == (
        "a lifecycle_transition may not change hubspot_owner_id (owner), email (email)"
    )
    as_field_update = KEYS["detector"].sign(make_proposal(changes=[owner]))
    _refused("fields_not_of_kind", lambda: VERIFIER.proposal(as_field_update))


def test_what_executes_must_be_a_signed_proposal(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    unsigned = KEYS["policy"].sign(make_decision(proposal=make_proposal()))
    before = _refusals("decision", "proposal_unsigned")
    _refused("proposal_unsigned", lambda: VERIFIER.decision(unsigned))
    assert _refusals("decision", "proposal_unsigned") == before + 1
    by_policy = KEYS["policy"].sign(make_decision(proposal=KEYS["policy"].sign(make_proposal())))
    _refused("proposal_signer_not_allowed", lambda: VERIFIER.decision(by_policy))
    # A decision that executes nothing needs no signed proposal (a retirement of an old one).
    rejected = make_decision(outcome=DecisionOutcome.REJECTED, proposal=make_proposal())
    assert VERIFIER.decision(KEYS["policy"].sign(rejected)) == "policy"


def test_a_policy_decision_cannot_change_what_it_decides(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    proposal = KEYS["detector"].sign(make_proposal())
    owner = FieldChange(field="hubspot_owner_id", previous="owner-a", proposed="owner-evil")
    other = FieldChange(field="jobtitle", previous=None, proposed="EVIL")
    for final in ([owner], [other], [*proposal.changes, other], []):
        decision = KEYS["policy"].sign(
            make_decision(proposal=proposal).model_copy(update={"final_changes": final})
        )
        with pytest.raises(SignatureRefusedError) as info:
            VERIFIER.decision(decision)
        assert info.value.reason == "changes_differ"


def test_a_human_may_change_proposed_values_only(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    proposal = KEYS["detector"].sign(make_proposal())
    [change] = proposal.changes

    def approval(outcome: DecisionOutcome, *final: FieldChange) -> Decision:
        decision = make_decision(proposal=proposal, outcome=outcome, decided_by=HUMAN)
        return KEYS["review-api"].sign(decision.model_copy(update={"final_changes": list(final)}))

    other_value = change.model_copy(update={"proposed": "CTO"})
    assert VERIFIER.decision(approval(DecisionOutcome.APPROVED_WITH_CHANGES, other_value)) == "review-api"
    assert VERIFIER.decision(approval(DecisionOutcome.APPROVED, change)) == "review-api"
    _refused("changes_differ", lambda: VERIFIER.decision(approval(DecisionOutcome.APPROVED, other_value)))
    other_field = other_value.model_copy(update={"field": "hubspot_owner_id"})
    other_previous = other_value.model_copy(update={"previous": "Engineer"})
    for final in ([other_field], [other_previous], [other_value, other_field]):
        with pytest.raises(SignatureRefusedError) as info:
            VERIFIER.decision(approval(DecisionOutcome.APPROVED_WITH_CHANGES, *final))
        assert info.value.reason == "changes_differ"


def test_a_review_request_is_policys_route_or_the_executors_conflict(
    make_proposal: Callable[..., Proposal], policy_decider: Decider
) -> None:
    detected = KEYS["detector"].sign(make_proposal())
    routed = ReviewRequest(proposal=detected, routed_by=policy_decider, explanation="needs a human")
    assert VERIFIER.review_request(KEYS["policy"].sign(routed)) == "policy"
    _refused("unsigned", lambda: VERIFIER.review_request(routed))
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["detector"].sign(routed)))
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["executor"].sign(routed)))
    unsigned_proposal = routed.model_copy(update={"proposal": make_proposal()})
    _refused("proposal_unsigned", lambda: VERIFIER.review_request(KEYS["policy"].sign(unsigned_proposal)))

    source = detected.source.model_copy(update={"event_id": f"{REPROPOSAL_PREFIX}d-1"})
    again = KEYS["executor"].sign(make_proposal(source=source))
    conflict = ReviewRequest(
        proposal=again, routed_by=Decider(kind="system", identity="executor"), explanation="conflict"
    )
    assert VERIFIER.review_request(KEYS["executor"].sign(conflict)) == "executor"
    # Policy routes the detector's proposals, not the executor's; the executor only its own.
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["policy"].sign(conflict)))
    as_policy = conflict.model_copy(update={"routed_by": policy_decider})
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["policy"].sign(as_policy)))
    detected_conflict = conflict.model_copy(update={"proposal": detected})
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["executor"].sign(detected_conflict)))


def test_a_refusal_checked_again_alone_is_counted_once(make_proposal: Callable[..., Proposal]) -> None:
    before = _refusals("proposal", "unsigned")
    _refused("unsigned", lambda: VERIFIER.proposal(make_proposal(), count=False))
    assert _refusals("proposal", "unsigned") == before
    _refused("unsigned", lambda: VERIFIER.proposal(make_proposal()))
    assert _refusals("proposal", "unsigned") == before + 1


def test_the_executors_re_proposals_are_those_of_a_conflict(make_proposal: Callable[..., Proposal]) -> None:
    proposal = make_proposal()
    source = proposal.source.model_copy(update={"event_id": "conflict:0d5b7a5e"})
    assert (
        VERIFIER.proposal(KEYS["executor"].sign(proposal.model_copy(update={"source": source}))) == "executor"
    )
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.proposal(KEYS["executor"].sign(proposal))
    assert info.value.detail == "the executor signs only its re-proposals after a conflict"


def test_audit_signs_only_reverts_sends_them_to_review_itself_and_policy_never_approves_them(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision], policy_decider: Decider
) -> None:
    proposal = make_proposal()
    source = proposal.source.model_copy(update={"event_id": "revert:42"})
    revert = KEYS["audit"].sign(proposal.model_copy(update={"source": source}))
    assert VERIFIER.proposal(revert) == "audit"
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.proposal(KEYS["audit"].sign(proposal))
    assert info.value.detail == "audit signs only reverts of entries of its log (never of a merge)"
    merge = revert.model_copy(update={"kind": ProposalKind.MERGE, "signature": None})
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(KEYS["audit"].sign(merge)))
    _refused("signer_not_allowed", lambda: VERIFIER.proposal(revert, frozenset({"detector"})))  # policy's
    routed = Decider(kind="system", identity="audit", rule_id="revert-needs-a-human")
    request = ReviewRequest(proposal=revert, routed_by=routed, explanation="a revert")
    assert VERIFIER.review_request(KEYS["audit"].sign(request)) == "audit"
    _refused("signer_not_allowed", lambda: VERIFIER.review_request(KEYS["policy"].sign(request)))
    auto = make_decision(proposal=revert, decided_by=policy_decider)
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.decision(KEYS["policy"].sign(auto))
    assert info.value.detail == "policy may not auto-approve a proposal of audit"
    human = make_decision(proposal=revert, outcome=DecisionOutcome.APPROVED, decided_by=HUMAN)
    assert VERIFIER.decision(KEYS["review-api"].sign(human)) == "review-api"


def test_refusals_say_why(
    make_proposal: Callable[..., Proposal], make_decision: Callable[..., Decision]
) -> None:
    proposal = KEYS["detector"].sign(make_proposal())
    decision = make_decision(
        proposal=proposal, outcome=DecisionOutcome.APPROVED_WITH_CHANGES, decided_by=HUMAN
    )
    moved = decision.model_copy(
        update={"final_changes": [FieldChange(field="email", previous=None, proposed="x@y.example")]}
    )
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.decision(KEYS["review-api"].sign(moved))
    assert info.value.detail == "an approval with changes may change proposed values only"
    approved = make_decision(proposal=proposal, outcome=DecisionOutcome.APPROVED, decided_by=HUMAN)
    changed = approved.model_copy(update={"final_changes": []})
    with pytest.raises(SignatureRefusedError) as info:
        VERIFIER.decision(KEYS["review-api"].sign(changed))
    assert info.value.detail == "an approved decision must apply the proposal's changes"


def test_review_request_refusals_are_counted_as_review_requests(
    make_proposal: Callable[..., Proposal], policy_decider: Decider
) -> None:
    detected = KEYS["detector"].sign(make_proposal())
    request = ReviewRequest(proposal=detected, routed_by=policy_decider, explanation="x")
    for reason, bad in (
        ("unsigned", request),
        ("proposal_unsigned", KEYS["policy"].sign(request.model_copy(update={"proposal": make_proposal()}))),
        ("signer_not_allowed", KEYS["detector"].sign(request)),
    ):
        before = _refusals("review_request", reason)
        _refused(reason, lambda bad=bad: VERIFIER.review_request(bad))  # type: ignore[misc]
        assert _refusals("review_request", reason) == before + 1, reason


def test_the_forms_of_a_message_and_what_it_holds_are_their_canonical_json(
    make_execution: Callable[..., Execution],
    signed_decision: Callable[..., Decision],
    make_proposal: Callable[..., Proposal],
) -> None:
    """Each level serialised once, then put in its place in its holder's: byte for byte what
    serialising each whole would give (signatures held inside included)."""
    decision = KEYS["policy"].sign(signed_decision())
    execution = KEYS["executor"].sign(make_execution(decision=decision))
    request = ReviewRequest(
        proposal=KEYS["detector"].sign(make_proposal()),
        queue="default",
        priority="normal",
        routed_by=Decider(kind="system", identity="executor", rule_id="compare-and-set-conflict"),
        explanation="x",
    )
    held: list[tuple[BaseModel, list[BaseModel]]] = [
        (execution, [execution.decision, execution.decision.proposal]),
        (request, [request.proposal]),
    ]
    for message, inside in held:
        out: dict[int, bytes] = {}
        whole = _forms(message, out)
        assert whole == canonical_json.dumps(message.model_dump(mode="json"))
        for model in [message, *inside]:
            assert out[id(model)] == canonical(model)
        outermost: dict[int, bytes] = {}
        assert _forms(message, outermost, held=False) == b""  # not held: its whole form is not needed
        assert outermost == out


class _Counting:
    """A public key that counts the signatures it is asked to check."""

    def __init__(self, key: Ed25519PublicKey, calls: list[bytes]) -> None:
        self.key, self.calls = key, calls

    def verify(self, signature: bytes, data: bytes) -> None:
        self.calls.append(data)
        self.key.verify(signature, data)


def _counting_verifier(calls: list[bytes]) -> Verifier:
    verifier = Verifier({k.key_id: k.trusted() for k in KEYS.values()})
    verifier.keys = {k: (s, _Counting(key, calls)) for k, (s, key) in verifier.keys.items()}  # type: ignore[misc]
    return verifier


def test_a_signature_is_verified_once_and_only_over_the_same_bytes(
    make_execution: Callable[..., Execution],
    signed_decision: Callable[..., Decision],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decision = KEYS["policy"].sign(signed_decision())
    execution = KEYS["executor"].sign(make_execution(decision=decision))
    monkeypatch.setattr(signing_module, "_VERIFIED", {})  # nothing verified (nor signed) here yet
    calls: list[bytes] = []
    fresh = _counting_verifier(calls)
    assert fresh.decision(decision) == "policy"
    assert calls == [canonical(decision), canonical(decision.proposal)]
    assert fresh.execution(execution) == "executor"
    assert calls[2:] == [canonical(execution)]  # what it holds was verified already
    # The same signature over other content is no verified signature.
    altered = decision.model_copy(update={"explanation": "something else"})
    _refused("bad_signature", lambda: fresh.decision(altered))
    forged = KEYS["executor"].sign(execution.model_copy(update={"decision": altered}))
    _refused("bad_signature", lambda: fresh.execution(forged))


def test_what_a_process_signed_it_does_not_verify_again(
    make_proposal: Callable[..., Proposal],
    make_decision: Callable[..., Decision],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signing_module, "_VERIFIED", {})
    proposal = KEYS["detector"].sign(make_proposal())  # signed here: remembered
    decision = KEYS["policy"].sign(make_decision(proposal=proposal))
    signing_module._VERIFIED.clear()
    KEYS["detector"].sign(make_proposal())  # the proposal signed again: the same signature (Ed25519)
    calls: list[bytes] = []
    assert _counting_verifier(calls).decision(decision) == "policy"
    assert calls == [canonical(decision)]


def test_only_audit_signs_checkpoints_and_a_changed_one_fails() -> None:
    settings, trusted = dev_keys("cp")
    verifier = Verifier(trusted)
    checkpoint = AuditCheckpoint(
        seq=5, hash="a" * 64, previous_seq=0, signed_at=datetime(2026, 12, 4, tzinfo=UTC)
    )
    signed = SigningKey.parse(settings["audit"], "audit").sign(checkpoint)
    assert verifier.checkpoint(signed) == "audit"
    with pytest.raises(SignatureRefusedError, match="bad_signature"):
        verifier.checkpoint(signed.model_copy(update={"hash": "b" * 64}))
    with pytest.raises(SignatureRefusedError, match="signer_not_allowed"):
        verifier.checkpoint(SigningKey.parse(settings["executor"], "executor").sign(checkpoint))
    with pytest.raises(SignatureRefusedError, match="unsigned"):
        verifier.checkpoint(checkpoint)
