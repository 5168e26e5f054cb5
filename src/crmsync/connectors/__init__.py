"""One adapter per vendor behind one interface (`base`); the engine never names a vendor."""

__all__ = ["base", "check", "fields", "httputil", "hubspot", "mapping", "registry"]
