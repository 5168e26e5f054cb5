"""Alembic migrations, shipped inside the package so `crmsync db upgrade` works when installed."""

__all__: list[str] = []
