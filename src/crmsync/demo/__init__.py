"""`crmsync demo` (`make run`): the whole tool on one machine, against the sandbox CRMs.

`config` builds the demo's own settings (never from the environment or `.env`), `contacts`
generates realistic leads, `seed` puts them in and selects a segment per CRM, `progress` shows
the sync, and `run` starts and stops it all.
"""

__all__ = ["options", "run"]
