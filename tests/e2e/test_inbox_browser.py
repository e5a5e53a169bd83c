"""The review inbox in a real headless Chromium (Debian's chromium, driven by Playwright; no browser
is ever downloaded) against the running stack: sign in, filter, open a merge and approve it, see it
executed through the live stream, approve with changes, bulk approve after a dry run — and the
page's promises: labelled controls, no console errors (a CSP violation is one), no secret in a URL.

Skips, saying why, only where chromium is not installed and not in CI (.ci/run installs it)."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer
from changegate.cli.devstack import DevStack
from changegate.core.contracts import ObjectType
from changegate.core.contracts.base import PropertyValue
from changegate.core.contracts.envelope import make_envelope
from changegate.core.kafka import publish
from changegate.core.topics import Topic, TopicNames
from changegate.executor.crm import sandbox
from helpers import created, enrichment, eventually, review_items, send_created

CHROMIUM = os.environ.get("CHANGEGATE_CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the pages are photographed: the README's ``docs/`` only on request (a test run leaves
    the tree as it was), else a folder pytest keeps with its last few runs and then removes."""
    if os.environ.get("CHANGEGATE_UPDATE_SCREENSHOTS") == "1":
        return Path(__file__).resolve().parents[2] / "docs"
    return tmp_path_factory.mktemp("screenshots")


# Every form control has an accessible name: a label, aria-label or aria-labelledby.
UNLABELLED = """() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
               && !e.getAttribute('aria-labelledby') && !e.closest('label'))
  .map(e => e.name || e.id)"""

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
    pytest.skip(
        f"browser tests need Debian's chromium at {CHROMIUM} (apt-get install chromium); .ci/run installs it",
        allow_module_level=True,
    )

from playwright.async_api import Browser, Page, async_playwright, expect  # noqa: E402


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, stack: DevStack) -> AsyncIterator[Page]:
    context = await browser.new_context(
        base_url=f"http://127.0.0.1:{stack.ports['review-api']}", viewport={"width": 1366, "height": 860}
    )
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    yield page
    await context.close()
    assert problems == [], problems  # no script error, no Content-Security-Policy violation
    for token in stack.issued.values():
        assert all(token not in url for url in urls), "a token went into a URL"


async def sign_in(page: Page, stack: DevStack, who: str) -> None:
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Sign in to review")).to_be_visible()
    await page.get_by_label("API token").fill(stack.issued[who])
    await page.keyboard.press("Enter")  # the keyboard is enough
    await expect(page.get_by_role("heading", name="Review inbox")).to_be_visible()
    await expect(page.get_by_text(f"Signed in as {who}")).to_be_visible()
    assert await page.evaluate(UNLABELLED) == []
    cookie = next(c for c in await page.context.cookies() if c["name"] == "changegate_session")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")


async def created_in_crm(
    db: asyncpg.Pool, stack: DevStack, producer: AIOKafkaProducer, rid: str, **props: PropertyValue
) -> None:
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid, dict(props))
    await send_created(stack, producer, rid, **props)


async def overwrite(db: asyncpg.Pool, stack: DevStack, producer: AIOKafkaProducer, title: str) -> str:
    """A record whose job title an enrichment wants to overwrite: a proposal waiting for review."""
    rid = f"title-{uuid.uuid4().hex[:8]}"
    await sandbox.upsert_record(db, ObjectType.CONTACT, rid, {"jobtitle": "Engineer"})
    topic = TopicNames(stack.topic_prefix)(Topic.CRM_EVENTS)
    for event in (created(rid, jobtitle="Engineer"), enrichment(rid, jobtitle=title)):
        await publish(producer, topic, rid, make_envelope(event, service="e2e"))
    return rid


async def pending(client: httpx.AsyncClient, stack: DevStack, rid: str) -> list[dict[str, Any]]:
    return await review_items(client, f"http://127.0.0.1:{stack.ports['review-api']}", rid)


async def test_sign_in_filter_open_a_merge_approve_it_and_see_it_executed(
    page: Page,
    stack: DevStack,
    db: asyncpg.Pool,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    screenshots: Path,
) -> None:
    tag = uuid.uuid4().hex[:6]
    first, second = f"ada-{tag}", f"ada2-{tag}"
    await created_in_crm(
        db,
        stack,
        producer,
        first,
        firstname="Ada",
        lastname=f"Lovelace{tag}",
        email=f"ada.{tag}@analytical.example",
        phone="+44 20 7946 0018",
        company="Analytical Engines",
        address="12 St James's Square",
        zip="SW1Y 4JH",
        city="London",
        jobtitle="Mathematician",
    )
    await created_in_crm(
        db,
        stack,
        producer,
        second,
        firstname="Ada",
        lastname=f"Lovelace{tag}",
        email=f"ADA.{tag}@analytical.example",
        phone="020 7946 0018",
        company="Analytical Engines Ltd",
    )
    [merge] = await eventually(
        lambda: pending(client, stack, second), lambda q: len(q) == 1, what="the merge"
    )
    await overwrite(db, stack, producer, "Countess")  # something else in the queue, filtered out below
    await sign_in(page, stack, "alice@example.com")

    await page.get_by_label("Kind", exact=True).select_option("merge")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"kind=merge"))
    rows = page.locator("table.queue tbody tr")
    await expect(rows.filter(has_text=first)).to_have_count(1)
    for kind in await rows.locator("td:nth-child(1) a").all_inner_texts():
        assert kind == "merge"

    await rows.filter(has_text=first).get_by_role("link", name="merge").click()
    await expect(page.get_by_role("heading", name="Records side by side")).to_be_visible()
    compare = page.locator("table.compare")
    await expect(compare.locator("thead")).to_contain_text(first)
    await expect(compare.locator("thead")).to_contain_text(second)
    await expect(compare.locator("tr", has_text="email")).to_contain_text("agree")
    await expect(page.locator(".rationale")).to_contain_text("duplicate")
    assert await page.evaluate(UNLABELLED) == []
    await page.screenshot(path=str(screenshots / "inbox-merge.png"), full_page=True)

    await page.get_by_label("Comment (optional)").first.fill("same person: email and phone agree")
    await page.get_by_role("button", name="Approve").first.click()
    await expect(page.get_by_text("Done: approved.")).to_be_visible()
    # No reload: the live stream brings the execution into the page.
    await expect(page.locator("#item-state")).to_contain_text("applied", timeout=30_000)
    await expect(page.locator("#history")).to_contain_text("executed")
    await expect(page.locator("#live")).to_contain_text("Updated: executed")
    executed = (
        await client.get(f"http://127.0.0.1:{stack.ports['review-api']}/v1/proposals/{merge['proposal_id']}")
    ).json()
    assert (executed["status"], executed["execution"]["status"]) == ("approved", "applied")


async def test_approve_with_changes(
    page: Page, stack: DevStack, db: asyncpg.Pool, client: httpx.AsyncClient, producer: AIOKafkaProducer
) -> None:
    rid = await overwrite(db, stack, producer, "VP Engineering")
    [item] = await eventually(lambda: pending(client, stack, rid), lambda q: len(q) == 1, what="an overwrite")
    await sign_in(page, stack, "bob@example.com")
    await page.goto(f"/inbox/proposals/{item['proposal_id']}")
    await expect(page.locator("table.diff")).to_contain_text("VP Engineering")
    await page.get_by_label("jobtitle", exact=True).fill("VP of Engineering, Platform")
    await page.get_by_role("button", name="Approve with these values").click()
    await expect(page.get_by_text("Done: approved with changes.")).to_be_visible()
    await expect(page.locator("table.diff")).to_contain_text("edited")
    await expect(page.locator("#item-state")).to_contain_text("applied", timeout=30_000)
    record = await eventually(
        lambda: sandbox.get_record(db, ObjectType.CONTACT, rid),
        lambda r: (r or {}).get("jobtitle") == "VP of Engineering, Platform",
        what="the edited value in the CRM",
    )
    assert record is not None
    rows = (
        await client.get(f"http://127.0.0.1:{stack.ports['audit']}/audit/entries", params={"record_id": rid})
    ).json()
    assert [(r["mode"], r["new_value"]) for r in rows] == [
        ("approved_with_changes", "VP of Engineering, Platform")
    ]


async def test_bulk_approve_after_a_dry_run(
    page: Page,
    stack: DevStack,
    db: asyncpg.Pool,
    client: httpx.AsyncClient,
    producer: AIOKafkaProducer,
    screenshots: Path,
) -> None:
    records = [await overwrite(db, stack, producer, f"Director {n}") for n in range(3)]
    items: list[dict[str, Any]] = []
    for rid in records:

        async def waiting(r: str = rid) -> list[dict[str, Any]]:
            return await pending(client, stack, r)

        items += await eventually(waiting, lambda q: len(list(q)) == 1, what="overwrites")
    await sign_in(page, stack, "admin@example.com")
    await page.get_by_label("Kind", exact=True).select_option("field_update")
    await page.get_by_role("button", name="Filter").click()
    for item in items:
        await expect(page.locator(f'tr[data-id="{item["proposal_id"]}"]')).to_be_visible()
    await page.screenshot(path=str(screenshots / "inbox.png"))
    for item in items:
        await page.locator(f'input[name="ids"][value="{item["proposal_id"]}"]').check()
    await page.get_by_role("button", name="Count first (dry run)").click()
    await expect(page.get_by_role("heading", name="Bulk approve: dry run")).to_be_visible()
    await expect(page.locator("p.notice")).to_contain_text("3 of 3 matching pending items would be approved")
    for rid in records:  # a dry run changes nothing
        assert [i["status"] for i in await pending(client, stack, rid)] == ["pending"]
    await page.get_by_role("button", name="Approve 3 items now").click()
    await expect(page.locator("p.notice")).to_contain_text("3 decided or approved")
    for rid in records:

        async def record(r: str = rid) -> dict[str, Any] | None:
            return await sandbox.get_record(db, ObjectType.CONTACT, r)

        await eventually(
            record,
            lambda rec: str((rec or {}).get("jobtitle", "")).startswith("Director"),
            what="bulk-approved overwrites applied",
        )
    # A viewer sees the queue but no bulk form, and no decision forms.
    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, stack, "eve@example.com")
    await expect(page.get_by_role("group", name="Bulk action (admin)")).to_have_count(0)


def test_chromium_is_what_ci_installs() -> None:
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
