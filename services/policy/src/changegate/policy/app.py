"""Policy service entrypoint: route proposals by the policy in force; reload it on SIGHUP or when
its file changes (an invalid new file is refused and the old policy stays)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
from pathlib import Path

import asyncpg
from changegate.core import __version__, policy_versions
from changegate.core.auth import Authenticator
from changegate.core.kafka import Subscription, is_transient
from changegate.core.logging import get_logger
from changegate.core.service import Consumer, Context, Parts, Service
from changegate.core.topics import Topic
from changegate.policy import shadow
from changegate.policy.engine import DEFAULT_POLICY, Policy, PolicyError
from changegate.policy.router import SERVICE, Router
from changegate.policy.settings import PolicySettings
from fastapi import FastAPI
from prometheus_client import Info

log = get_logger(__name__)
POLICY_INFO = Info("changegate_policy", "The policy in force: version, content hash, source")


async def record_version(pool: asyncpg.Pool, policy: Policy) -> None:
    """The executor and audit accept decisions of recorded versions only."""
    if await policy_versions.record(
        pool,
        version=policy.version,
        content_hash=policy.content_hash,
        source=policy.source,
        content=policy.content,
    ):
        log.info("policy version recorded", version=policy.version, hash=policy.content_hash)


def _announce(policy: Policy) -> None:
    POLICY_INFO.info({"version": policy.version, "hash": policy.content_hash, "source": policy.source})
    for warning in policy.warnings:
        log.warning("policy warning", warning=warning)


class PolicyWatcher:
    """Reloads the policy file on SIGHUP and when its content changes."""

    def __init__(self, path: Path | None, router: Router, stop: asyncio.Event, poll_seconds: float) -> None:
        self.path, self.router, self.stop, self.poll_seconds = path, router, stop, poll_seconds
        self._hup = asyncio.Event()

    def sighup(self) -> None:
        self._hup.set()

    async def reload(self) -> None:
        with contextlib.suppress(OSError):  # unreadable: Policy.load says why
            if (
                hashlib.sha256((self.path or DEFAULT_POLICY).read_bytes()).hexdigest()
                == self.router.policy.content_hash
            ):
                return  # unchanged: not parsed again every poll
        try:
            policy = Policy.load(self.path)
        except PolicyError as exc:
            log.error("new policy refused; the current one stays", error=str(exc))
            return
        if policy.content_hash != self.router.policy.content_hash:
            try:
                await record_version(self.router.pool, policy)  # before it decides anything
            except Exception as exc:  # the database away: the current policy stays, tried again
                if not is_transient(exc):
                    raise
                log.warning("new policy not recorded yet; the current one stays", error=repr(exc))
                return
            _announce(policy)
            self.router.switch(policy)

    async def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(), self.poll_seconds)
            self._hup.clear()
            if not self.stop.is_set():
                await self.reload()

    async def _wait(self) -> None:
        stop = asyncio.ensure_future(self.stop.wait())
        hup = asyncio.ensure_future(self._hup.wait())
        try:
            await asyncio.wait({stop, hup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            hup.cancel()


async def start_shadow(pool: asyncpg.Pool, candidate: Policy | None) -> shadow.Shadow:
    """The candidate of CHANGEGATE_SHADOW_POLICY_FILE runs in shadow (else the one last started by
    `changegate policy shadow`, if any)."""
    if candidate is not None:
        async with pool.acquire() as conn:
            await shadow.start(conn, candidate, by="setting CHANGEGATE_SHADOW_POLICY_FILE")
    in_shadow = shadow.Shadow(pool)
    await in_shadow.refresh()
    return in_shadow


def _loads(settings: PolicySettings) -> None:
    """The policy file (and a shadow candidate's) is valid, and its API has authentication: else
    the service stops here, before connecting anything."""
    settings.require_configured(SERVICE)
    Policy.load(settings.policy_file)
    if settings.shadow_policy_file:
        Policy.load(settings.shadow_policy_file)


async def setup(ctx: Context[PolicySettings]) -> Parts:
    settings = ctx.settings
    policy = Policy.load(settings.policy_file)
    _announce(policy)
    log.info("policy loaded", version=policy.version, hash=policy.content_hash, source=policy.source)
    await record_version(ctx.pool, policy)
    candidate = Policy.load(settings.shadow_policy_file) if settings.shadow_policy_file else None
    in_shadow = await start_shadow(ctx.pool, candidate)
    router = Router(ctx.pool, policy, ctx.names, ctx.signer(), ctx.verifier(), in_shadow)
    subscriptions = [
        Subscription.batch(Topic.PROPOSALS, frozenset({"proposal"}), router.handle_batch),
        Subscription.batch(Topic.DECISIONS, frozenset({"decision"}), router.on_decisions),
    ]
    watcher = PolicyWatcher(settings.policy_file, router, ctx.runtime.stop, settings.policy_poll_seconds)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, watcher.sighup)
    app = FastAPI(
        title="changegate policy",
        version=__version__,
        description="The candidate policy in shadow, against the policy in force and human decisions. "
        "Authenticate with 'Authorization: Bearer <token>' (viewer role or above, without queue or kind "
        "scopes: the diff spans every queue).",
    )
    app.state.authenticator = Authenticator(settings, ctx.pool)
    app.include_router(shadow.api(ctx.pool))
    return Parts(
        consumers=[Consumer("changegate-policy", subscriptions)],
        app=ctx.runtime.app(app),
        workers=[watcher.run, lambda: in_shadow.run(ctx.runtime.stop, settings.policy_poll_seconds)],
    )


POLICY = Service(
    SERVICE,
    PolicySettings,
    setup,
    migrations="changegate.policy.migrations",
    outbox=True,
    check=_loads,
)
main = POLICY.main
