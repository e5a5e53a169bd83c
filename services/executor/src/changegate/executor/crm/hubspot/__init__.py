"""HubSpot CRM v3: the HTTP client and the adapter."""
