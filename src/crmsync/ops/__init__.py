"""Operations: health, status summary, failed report, retry, reset, pause/resume, metrics."""
