"""Audit: the append-only, hash-chained log of every executed change, and its query API."""
