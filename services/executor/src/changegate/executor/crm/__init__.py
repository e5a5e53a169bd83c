"""The executor's CRM adapters: the port every CRM implements, the sandbox and HubSpot."""
