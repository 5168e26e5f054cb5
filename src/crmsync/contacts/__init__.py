"""Contacts: schemas, repository (all contact SQL), service (use cases), import and export."""

__all__ = ["columns", "cursors", "exporter", "importer", "schemas", "service"]
