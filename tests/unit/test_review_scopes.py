"""Reading within scopes: the SQL filter of the review queue, per grant."""

from __future__ import annotations

from changegate.core.auth import Grant, Role
from changegate.review_api.queue import scope_filter


def test_no_scopes_reads_everything_and_no_grant_reads_nothing() -> None:
    assert scope_filter(None, 3) == ("TRUE", [])
    assert scope_filter([], 3) == ("(FALSE)", [])


def test_each_grant_is_one_alternative_numbered_from_the_first_free_argument() -> None:
    grants = [
        Grant(Role.VIEWER, queues=frozenset({"dedup", "b"})),
        Grant(Role.REVIEWER, queues=frozenset({"q"}), kinds=frozenset({"merge"})),
        Grant(Role.VIEWER),
    ]
    sql, args = scope_filter(grants, 6)
    assert sql == (
        "((TRUE AND queue = ANY($6::text[])) OR "
        "(TRUE AND queue = ANY($7::text[]) AND kind = ANY($8::text[])) OR (TRUE))"
    )
    assert args == [["b", "dedup"], ["q"], ["merge"]]
