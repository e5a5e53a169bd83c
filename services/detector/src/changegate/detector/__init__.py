"""Detector: turns CRM and pipeline events into proposals, keeping record state in PostgreSQL."""

DETECTOR_VERSION = "0.1.0"
