"""CRM adapters: where approved changes are written."""
