"""The sync core: a durable per-CRM queue (the state table) drained by workers.

What other packages use: `worker` (`Worker`, `Hooks`), `selection` (what enters the queue),
`state` (the state machine, `Outcome`, `RowUpdate`), `control` (pauses), `events` (history),
`heartbeat`, `budget`, `wakeup`. The queue's steps (`claim`, `record`, `lease`, through `queue`)
and the worker's parts (`runner`, `gate`, `push`, `hooks`, `tuning`) are the core's own.
"""

__all__ = [
    "budget",
    "control",
    "events",
    "heartbeat",
    "selection",
    "state",
    "wakeup",
    "worker",
]
