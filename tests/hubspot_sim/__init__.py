"""A HubSpot CRM v3 simulator for tests, validated against HubSpot's own OpenAPI documents."""

from hubspot_sim.app import create_app
from hubspot_sim.server import SimServer

__all__ = ["SimServer", "create_app"]
