"""Operations: health, status summary, failed report, retry, reset, pause/resume, metrics."""

__all__ = [
    "drain",
    "health",
    "overview",
    "probes",
    "prometheus",
    "render",
    "schemas",
    "service",
]
