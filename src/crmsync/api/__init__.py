"""The HTTP API: `app.create_app` builds it; routers stay thin over the services."""

__all__ = ["app", "deps", "errors"]
