"""Ingest: signed webhooks (HubSpot, and configured sources such as Clay, email verifiers, scoring
and form tools) become CrmEvents on the crm.events topic, answered 2xx only once stored."""
