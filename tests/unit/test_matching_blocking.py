"""Blocking keys that survive typos, nicknames, swapped names and missing values (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest
from changegate.detector.matching import index as index_module
from changegate.detector.matching.blocking import MAX_KEY_LENGTH, blocking_keys, select_candidates
from changegate.detector.matching.index import BlockingIndex
from changegate.detector.matching.normalize import features

PERSON = {
    "firstname": "Catherine",
    "lastname": "Harrington",
    "email": "catherine.harrington@acme.com",
    "phone": "+1 415 555 2671",
    "company": "Acme Inc.",
    "address": "12 Tullaroop Street",
    "city": "St James",
    "zip": "4011",
}


def keys(**props: Any) -> set[str]:
    return blocking_keys(features("contact", props))


def share(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return keys(**a) & keys(**b)


@pytest.mark.parametrize(
    "damage",
    [
        {"lastname": "Harington"},  # a dropped letter
        {"lastname": "Harrigton"},
        {"firstname": "Kathryn"},  # another spelling
        {"firstname": "Catherien"},  # swapped letters
        {"firstname": "Harrington", "lastname": "Catherine"},  # swapped names
        {"email": "", "phone": ""},
        {"zip": "4101", "city": ""},  # a mistyped postcode
        {"address": "", "zip": ""},
    ],
)
def test_one_damaged_field_still_shares_a_key_without_email_or_phone(damage: dict[str, Any]) -> None:
    a = {**PERSON, "email": "", "phone": ""}
    assert share(a, {**a, **damage})


def test_both_names_damaged_still_share_the_household() -> None:
    a = {k: v for k, v in PERSON.items() if k not in ("email", "phone", "company")}
    b = {**a, "firstname": "Kate", "lastname": "Harringten"}
    assert {k.split(":")[1] for k in share(a, b)} >= {"street+post", "street+city", "number+post"}


def test_typoed_names_share_a_sound_key() -> None:
    a, b = keys(firstname="Jon", lastname="Smyth"), keys(firstname="John", lastname="Smith")
    assert [k for k in a & b if k.startswith("contact:sound:")]


def test_the_sound_key_ignores_the_order_of_the_names() -> None:
    a, b = keys(firstname="Smith", lastname="John"), keys(firstname="John", lastname="Smith")
    assert {k for k in a if ":sound:" in k} == {k for k in b if ":sound:" in k}


def test_email_phone_and_mailbox_keys() -> None:
    ks = keys(email="Jane.Doe@Acme.com", lastname="Doe", phone="(415) 555-2671")
    assert "contact:email:jane.doe@acme.com" in ks
    assert "contact:mailbox:janedoe" in ks
    assert "contact:emlast:doe@acme.com" in ks
    assert "contact:phone:+14155552671" in ks
    # the same mailbox name at another domain (personal vs work address)
    assert share({"email": "jane.doe@gmail.com"}, {"email": "jane.doe@acme.com"}) == {
        "contact:mailbox:janedoe"
    }


@pytest.mark.parametrize(("local", "keyed"), [("bob", False), ("b.ob", False), ("bobs", True)])
def test_short_mailbox_names_are_not_keys(local: str, keyed: bool) -> None:
    assert bool([k for k in keys(email=f"{local}@acme.com") if ":mailbox:" in k]) is keyed


def test_free_mail_domain_is_not_a_company() -> None:
    assert not [k for k in keys(email="jane.doe@gmail.com", lastname="Doe") if ":emlast:" in k]


def test_no_single_common_value_is_a_key_alone() -> None:
    lonely = keys(lastname="Smith") | keys(firstname="John") | keys(city="Berlin") | keys(zip="10115")
    assert lonely == set()


def test_initial_sound_and_house_number() -> None:
    a = keys(firstname="Cathy", lastname="Harrington", address="12 Tullaroop Street", zip="4011")
    b = keys(firstname="C", lastname="Harington", address="12 Tularoop St", zip="9999")
    assert [k for k in a & b if ":initstreet:" in k]


def test_contacts_and_companies_never_share_keys() -> None:
    contact = blocking_keys(features("contact", {"firstname": "Acme", "lastname": "Corp", "zip": "1"}))
    company = blocking_keys(features("company", {"name": "Acme Corp", "zip": "1", "domain": "acme.com"}))
    assert contact
    assert company
    assert not contact & company
    assert all(k.startswith("company:") for k in company)


def test_company_keys() -> None:
    ks = blocking_keys(
        features("company", {"name": "Acme Widgets Inc", "domain": "https://www.acme.com/x", "zip": "94105"})
    )
    assert ks >= {"company:domain:acme.com", "company:company:acme widgets", "company:comppost:acme|94105"}


def test_an_empty_record_has_no_keys_and_keys_are_bounded() -> None:
    assert keys() == set()
    long = keys(firstname="a" * 500, lastname="b" * 500)
    assert long
    assert all(len(k) <= MAX_KEY_LENGTH for k in long)


# --- which candidates an event is compared with ---------------------------------------------------


def test_candidates_share_the_most_keys_first_then_the_newest() -> None:
    holders = [[1, 2, 3], [2, 3], [3, 9], [2]]
    assert select_candidates(holders, max_per_key=20, limit=10) == [3, 2, 9, 1]
    assert select_candidates(holders, max_per_key=20, limit=2) == [3, 2]


@pytest.mark.parametrize(("held", "kept"), [(3, True), (4, False)])
def test_a_key_held_by_more_records_than_the_limit_is_skipped(held: int, kept: bool) -> None:
    common = list(range(100, 100 + held))
    found = select_candidates([common, [7]], max_per_key=3, limit=10)
    assert (100 in found) is kept
    assert 7 in found


def test_a_record_held_twice_under_one_key_counts_once() -> None:
    assert select_candidates([[5, 5, 5], [6]], max_per_key=2, limit=1) == [6]  # a tie: the newest


def test_no_keys_no_candidates() -> None:
    assert select_candidates([]) == []
    assert select_candidates([[]]) == []


def test_the_in_process_index_finds_typoed_records_and_forgets_removed_ones() -> None:
    index = BlockingIndex("contact", max_records_per_key=3, max_candidates=5)
    person = {"firstname": "Catherine", "lastname": "Harrington", "address": "12 Tullaroop St", "zip": "4011"}
    index.bulk_load([("a", features("contact", person))])
    index.put("b", features("contact", {**person, "lastname": "Harington"}))
    typo = features("contact", {**person, "firstname": "Kathryn"})
    assert [rid for rid, _ in index.candidates(typo)] == ["a", "b"]  # a shares the surname too
    assert index.candidates(typo, exclude="b")[0] == ("a", index.features("a"))
    index.put("b", features("contact", {"firstname": "Zed", "zip": "9999"}))  # b changed: new keys
    assert [rid for rid, _ in index.candidates(typo)] == ["a"]
    index.remove("a")
    assert index.candidates(typo) == []
    assert len(index) == 1
    assert "a" not in index


def test_the_index_folds_and_merges_its_runs_without_losing_records(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "RECENT_POSTINGS", 10)
    index = BlockingIndex("contact")
    people = [
        features("contact", {"firstname": f"n{i}", "lastname": f"l{i}", "zip": str(i)}) for i in range(50)
    ]
    for i, f in enumerate(people):
        index.put(f"r{i}", f)
    index.remove("r7")
    for i, f in enumerate(people):
        found = [rid for rid, _ in index.candidates(f)]
        assert found == ([] if i == 7 else [f"r{i}"])
    assert index.postings < 50 * 6  # merged runs dropped the dead record's postings, or will


def test_features_survive_the_packing() -> None:
    f = features("contact", {**PERSON, "email": "odd\x1fmailbox@acme.com"})
    index = BlockingIndex("contact")
    index.put("x", f)
    kept = index.features("x")
    assert kept is not None
    assert kept.email == "odd mailbox@acme.com"  # the separator never splits a field
    assert kept.phone == f.phone
    assert kept.last_sound == f.last_sound
    assert index.features("missing") is None


def test_typo_tolerant_keys_survive_damage_to_names_place_and_street_at_once() -> None:
    """Postal records (no email, no phone) with a name replaced, the street type mistyped or run
    together and the postcode's digits swapped still share a key: the street name's and the
    town's first letters, or the sound of a name with the house number."""
    base = {
        "firstname": "Alice",
        "lastname": "Riding",
        "address": "18 Aspinall Street",
        "city": "Maryborough",
    }
    assert share(
        {**base, "zip": "2448"},
        {
            "firstname": "Alicia",
            "lastname": "Exclel",
            "address": "18 aspinallrtreet",
            "city": "Marybourgh",
            "zip": "2484",
        },
    ) == {"contact:street+town:aspi|mary"}  # no key before these
    assert "contact:sound+number:RTNK|18" in share(
        {**base, "zip": "2448"},
        {
            "firstname": "Alyce",
            "lastname": "Ridding",
            "address": "18 Aspinal Place",
            "city": "Marybrough",
            "zip": "2484",
        },
    )
