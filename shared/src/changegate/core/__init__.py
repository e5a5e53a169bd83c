"""changegate shared library: contracts, Kafka and PostgreSQL plumbing, logging and metrics."""

__version__ = "0.1.0"
