"""The HubSpot simulator as its own process: `python -m changegate.hubspot_sim --port P`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import uvicorn
from changegate.hubspot_sim.app import APP_ID, PORTAL_ID, TOKEN, create_app
from changegate.hubspot_sim.validation import SPECS_DIR_ENV, Validator, default_specs_dir
from changegate.hubspot_sim.webhooks import Subscription

SECRET_ENV = "CHANGEGATE_HUBSPOT_SIM_CLIENT_SECRET"
TOKEN_ENV = "CHANGEGATE_HUBSPOT_SIM_TOKEN"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m changegate.hubspot_sim", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--specs",
        type=Path,
        default=default_specs_dir(),
        help=f"the folder holding hubspot/*.json (default: ${SPECS_DIR_ENV}, else ../shared/specs); "
        "without it nothing is validated against HubSpot's documents",
    )
    parser.add_argument(
        "--webhook-url", help=f"report every change there, signed with ${SECRET_ENV} (HubSpot's signature v3)"
    )
    parser.add_argument(
        "--webhook-properties", help="comma-separated properties whose changes are reported (default: all)"
    )
    parser.add_argument(
        "--seed-contacts", type=int, default=0, help="a realistic population of this many contacts"
    )
    parser.add_argument("--seed", type=int, default=1, help="the population's random seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s hubspot-sim %(message)s")
    log = logging.getLogger("hubspot-sim")
    token = os.environ.get(TOKEN_ENV, TOKEN)
    subscription = None
    if args.webhook_url:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            parser.error(f"--webhook-url needs the app's client secret in ${SECRET_ENV}")
        properties = frozenset(args.webhook_properties.split(",")) if args.webhook_properties else None
        subscription = Subscription(args.webhook_url, secret, APP_ID, PORTAL_ID, properties)
    log.info(Validator(args.specs).describe())
    population = (args.seed_contacts, args.seed) if args.seed_contacts else None
    app = create_app(args.specs, token, subscription=subscription, population=population)
    if population:
        log.info("seeded a population of %s contacts (seed %s)", *population)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
