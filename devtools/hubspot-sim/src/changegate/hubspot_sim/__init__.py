"""A HubSpot CRM v3 simulator: `changegate dev up --crm hubspot-sim` runs it instead of a portal; the
tests and benchmarks run the HubSpot adapter and the import against it."""

from changegate.hubspot_sim.app import APP_ID, PORTAL_ID, TOKEN, UI_TOKEN, create_app
from changegate.hubspot_sim.server import SimServer

__all__ = ["APP_ID", "PORTAL_ID", "TOKEN", "UI_TOKEN", "SimServer", "create_app"]
