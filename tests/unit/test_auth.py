"""Roles, scopes and the authentication settings' guard rails (pure logic)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from changegate.core.auth import AuthSettings, Grant, Principal, Role, normalize_identity
from changegate.core.auth.tokens import parse_duration
from pydantic import ValidationError


def test_roles_include_the_ones_below_them() -> None:
    assert Role.ADMIN.includes(Role.REVIEWER)
    assert Role.REVIEWER.includes(Role.VIEWER)
    assert Role.VIEWER.includes(Role.VIEWER)
    assert not Role.VIEWER.includes(Role.REVIEWER)
    assert not Role.REVIEWER.includes(Role.ADMIN)


def test_scopes_limit_a_grant_to_queues_and_kinds() -> None:
    data_team = Principal("dave", (Grant(Role.REVIEWER, kinds=frozenset({"merge"})),))
    assert data_team.may(Role.REVIEWER, queue="dedup", kind="merge")
    assert not data_team.may(Role.REVIEWER, queue="dedup", kind="field_update")
    assert data_team.may(Role.VIEWER)  # reading is not scoped
    desk = Principal("dana", (Grant(Role.REVIEWER, queues=frozenset({"dedup"})),))
    assert desk.may(Role.REVIEWER, queue="dedup", kind="field_update")
    assert not desk.may(Role.REVIEWER, queue="default", kind="merge")
    both = Principal("x", (Grant(Role.VIEWER), Grant(Role.REVIEWER, queues=frozenset({"q"}))))
    assert both.may(Role.REVIEWER, queue="q")
    assert not both.may(Role.REVIEWER, queue="other")
    assert not Principal("nobody").may(Role.VIEWER)


@pytest.mark.parametrize("algorithm", ["HS256", "none", "HS512"])
def test_symmetric_and_none_algorithms_are_refused(algorithm: str) -> None:
    with pytest.raises(ValidationError, match="asymmetric only"):
        AuthSettings(auth_oidc_algorithms=["RS256", algorithm])


def test_oidc_needs_an_audience_and_nothing_configured_is_refused() -> None:
    with pytest.raises(ValidationError, match="audience is required"):
        AuthSettings(auth_oidc_issuer="https://id.example.com")
    nothing = AuthSettings(auth_api_tokens=False, auth_oidc_issuer=None)
    assert not nothing.configured
    with pytest.raises(SystemExit, match="no authentication configured"):
        nothing.require_configured("review-api")
    assert AuthSettings(auth_api_tokens=True).configured


@pytest.mark.parametrize(
    ("text", "delta"), [("12h", timedelta(hours=12)), ("90d", timedelta(days=90)), ("2w", timedelta(weeks=2))]
)
def test_token_lifetimes(text: str, delta: timedelta) -> None:
    assert parse_duration(text) == delta


@pytest.mark.parametrize("text", ["", "90", "d", "-1d", "1y", "1.5d", "123456d"])
def test_bad_token_lifetimes_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number"):
        parse_duration(text)


@pytest.mark.parametrize(
    "spelling",
    [
        "self-x@example.com",
        "Self-x@Example.com",
        " SELF-X@EXAMPLE.COM ",
        "\uff53\uff45\uff4c\uff46-x@example.com",  # fullwidth letters
    ],
)
def test_an_identity_is_normalised_where_the_principal_is_made(spelling: str) -> None:
    principal = Principal(spelling)
    assert principal.subject == "self-x@example.com"
    assert principal.is_("self-x@example.com")
    assert Principal("self-x@example.com").is_(spelling)
    assert not principal.is_(None)
    assert not principal.is_("other@example.com")
    assert normalize_identity("Straße@X.example") == "strasse@x.example"


def test_what_a_principal_may_read() -> None:
    everything = Principal("v", (Grant(Role.VIEWER),))
    assert everything.reads() is None
    desk = Grant(Role.REVIEWER, queues=frozenset({"dedup"}))
    merges = Grant(Role.VIEWER, kinds=frozenset({"merge"}))
    scoped = Principal("d", (desk, merges))
    assert scoped.reads() == [desk, merges]
    assert scoped.reads(Role.REVIEWER) == [desk]
    assert Principal("n").reads() == []
    assert Principal("a", (merges, Grant(Role.ADMIN))).reads() is None
