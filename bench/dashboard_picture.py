"""docs/dashboard.png: the Grafana dashboard's panels, drawn from their own PromQL against a real
Prometheus that scraped the embedded stack under load.

Grafana is not installable here (no Docker; neither Debian nor PyPI ship it), so this script runs
the Prometheus server from Debian's `prometheus` package (`make prometheus-tools` extracts it, never
installed) with deploy/prometheus's rules, starts the embedded stack (`changegate dev up`'s
DevStack), feeds the demo's scenarios through ingest for a few minutes while a reviewer approves or
rejects the field changes waiting (merges and owner changes keep waiting), then asks Prometheus for
every panel's queries (query_range) and draws them with matplotlib in the dashboard's layout. What
it shows is measured, on this machine, in that run.

    .venv/bin/python bench/dashboard_picture.py [--minutes 4] [--out docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS = REPO / ".cache" / "prometheus" / "usr" / "bin" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "changegate-flow.json"
RULES = REPO / "deploy" / "prometheus" / "rules" / "changegate.rules.yml"
SCRAPE_SECONDS = 5
# Grafana picks $__rate_interval from the scrape interval (at least 4 of them); with 5 s scrapes:
RATE_INTERVAL = "1m"


def prometheus_version() -> str:
    out = subprocess.run([str(PROMETHEUS), "--version"], capture_output=True, text=True, check=True)
    return (out.stdout or out.stderr).split()[2].split("+")[0]


@contextlib.contextmanager
def prometheus(targets: dict[str, int], workdir: Path) -> Iterator[str]:
    from changegate.cli.embedded import free_port, wait_for_port

    if not PROMETHEUS.is_file():
        sys.exit(f"{PROMETHEUS.relative_to(REPO)} is missing: run `make prometheus-tools`")
    port = free_port()
    (workdir / "rules").mkdir(parents=True, exist_ok=True)
    (workdir / "rules" / RULES.name).write_text(RULES.read_text())
    config = {
        "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
        "rule_files": [str(workdir / "rules" / "*.yml")],
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [f"127.0.0.1:{p}"]}]}
            for name, p in targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 30, proc)
        yield f"http://127.0.0.1:{port}"
    except BaseException:
        if proc.poll() is not None:  # it ended: say why
            log.flush()
            tail = (workdir / "prometheus.log").read_text(errors="replace")[-3000:]
            print(f"prometheus exited ({proc.returncode}):\n{tail}", file=sys.stderr)
        raise
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def load(stack: Any, minutes: float) -> int:
    """The demo's five scenarios round after round through ingest, and a reviewer deciding part of
    what waits (so both modes of the event age show)."""
    from changegate.cli.main import _demo_stream

    review = f"http://127.0.0.1:{stack.ports['review-api']}"
    token = stack.issued["reviewer@example.com"]
    deadline = time.monotonic() + minutes * 60
    sent = 0

    async def reviewer() -> None:
        """Every 5 s, the field changes waiting: half approved, half rejected (merges and owner
        changes are left waiting, so the queue grows as it would without enough reviewers)."""
        async with httpx.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {token}"}) as client:
            while time.monotonic() < deadline:
                for kind in ("field_update", "lifecycle_transition", "email_verification"):
                    page = await client.get(f"{review}/v1/proposals", params={"limit": 200, "kind": kind})
                    for n, item in enumerate(page.json()["items"]):
                        url = f"{review}/v1/proposals/{item['proposal_id']}"
                        if n % 2:
                            await client.post(f"{url}/reject", json={"reason": "not now"})
                        else:
                            await client.post(f"{url}/approve", json={"comment": "ok"})
                await asyncio.sleep(5)

    task = asyncio.create_task(reviewer())
    round_ = 0
    while time.monotonic() < deadline:
        round_ += 1
        sent += await _demo_stream(
            stack.settings(), 5, 0.4, seed=round_, run=f"pic{round_}", ingest=stack.ingest_target()
        )
    await task
    return sent


def query_range(api: str, expr: str, start: float, end: float, step: int) -> list[dict[str, Any]]:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    answer = httpx.get(
        f"{api}/api/v1/query_range",
        params={"query": expr, "start": start, "end": end, "step": step},
        timeout=30,
    ).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def draw(api: str, start: float, end: float, out: Path, subtitle: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    top = 2  # grid units above the first row: the title
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) + top
    unit_px = 0.42  # inches per grid unit of height
    fig = plt.figure(figsize=(24, rows * unit_px), facecolor="#111217")
    step = max(10, int((end - start) / 200))
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24, g["w"] / 24
        bottom, height = 1 - (top + g["y"] + g["h"]) / rows, g["h"] / rows
        if panel["type"] == "row":
            fig.text(
                left + 0.005,
                bottom + height * 0.2,
                panel["title"],
                color="#d8d9da",
                fontsize=13,
                weight="bold",
            )
            continue
        ax = fig.add_axes((left + 0.03 * width, bottom + 0.16 * height, width * 0.92, height * 0.68))
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for target in panel["targets"]:
            for result in query_range(api, target["expr"], start, end, step):
                points = [
                    (float(t), float(v)) for t, v in result["values"] if v not in ("NaN", "+Inf", "-Inf")
                ]
                if points:
                    series.append((legend(target.get("legendFormat", ""), result["metric"]), points))
        if panel["type"] == "stat":
            ax.set_xticks([])
            ax.set_yticks([])
            last = series[0][1][-1][1] if series else None
            text = "no data" if last is None else (f"{last:.0%}" if unit == "percentunit" else f"{last:.3g}")
            if last is not None and panel["title"] == "Breaker state":
                text = {0: "closed", 1: "half-open", 2: "open"}.get(int(last), text)
            ax.text(
                0.5,
                0.45,
                text,
                color="#73bf69",
                fontsize=26,
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        if not series:
            ax.text(
                0.5,
                0.5,
                "no data in this run",
                color="#8e8e8e",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for name, points in sorted(series)[:8]:
            xs = [(t - start) / 60 for t, _ in points]
            ax.plot(xs, [v for _, v in points], linewidth=1.2, label=name[:40])
        ax.set_xlim(0, (end - start) / 60)
        ax.set_xlabel("minutes", color="#8e8e8e", fontsize=7, labelpad=1)
        if unit in ("s", "ops", "reqps", "percentunit"):
            ax.set_ylabel(
                {"s": "seconds", "ops": "per second", "reqps": "per second", "percentunit": "share"}[unit],
                color="#8e8e8e",
                fontsize=7,
            )
        ax.legend(fontsize=6, loc="upper left", framealpha=0.3, labelcolor="#d8d9da", facecolor="#181b1f")
    fig.text(0.005, 1 - 0.4 / rows, dashboard["title"], color="#d8d9da", fontsize=18, va="top", weight="bold")
    fig.text(0.005, 1 - 1.2 / rows, subtitle, color="#8e8e8e", fontsize=12, va="top")
    fig.savefig(out, dpi=72, facecolor=fig.get_facecolor())
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="how long to feed the stack")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    args = parser.parse_args()
    from changegate.cli.devstack import DEFAULT_PORTS, DevStack
    from changegate.cli.embedded import free_port
    from changegate.core.auth.principal import Role

    with tempfile.TemporaryDirectory(prefix="changegate-picture-") as tmp:
        work = Path(tmp)
        stack = DevStack(
            work / "stack",
            ports={name: free_port() for name in DEFAULT_PORTS},
            tokens={"reviewer@example.com": Role.REVIEWER},
            on_step=lambda s: print(f"  {s}", file=sys.stderr),
        )
        try:
            stack.start()
            targets = {name: port for name, port in stack.ports.items() if name != "broker"}
            with prometheus(targets, work / "prometheus") as api:
                start = time.time()
                print(f"feeding the stack for {args.minutes:g} minutes", file=sys.stderr)
                sent = asyncio.run(load(stack, args.minutes))
                time.sleep(3 * SCRAPE_SECONDS)  # the last scrapes after the load
                end = time.time()
                subtitle = (
                    f"the embedded stack fed {sent} demo steps in {args.minutes:g} min (Prometheus "
                    f"{prometheus_version()} scraping every {SCRAPE_SECONDS} s; drawn with matplotlib "
                    "from the panels' own PromQL)"
                )
                draw(api, start, end, args.out, subtitle)
                print(f"wrote {args.out}", file=sys.stderr)
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
