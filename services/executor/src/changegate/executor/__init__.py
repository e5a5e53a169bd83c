"""Executor: applies approved decisions to the CRM with compare-and-set, exactly once."""
