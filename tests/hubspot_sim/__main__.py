"""The HubSpot simulator as its own process (benchmarks): python -m hubspot_sim --port P [--specs DIR]."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn

from hubspot_sim.app import create_app
from hubspot_sim.server import TOKEN

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--specs",
        type=Path,
        default=Path(os.environ.get("CHANGEGATE_SPECS_DIR", REPO_ROOT.parent / "shared" / "specs")),
        help="the directory holding hubspot/*.json (default: $CHANGEGATE_SPECS_DIR, else ../shared/specs)",
    )
    parser.add_argument("--token", default=TOKEN, help="the private-app token the simulator accepts")
    args = parser.parse_args()
    uvicorn.run(create_app(args.specs, args.token), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
