"""The one exception type for a user's mistake: what they asked for cannot run as given.

A bad configuration value, an unknown key, a missing table, column or path. The CLI prints its
message on one line and exits with status 2 (the traceback only with ``--debug``); any other
exception is a bug or an outage and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake the user can fix from the message alone (it names the key, table, column or path)."""


class QualityAlert(RuntimeError):
    """A run finished and wrote its tables, but its own quality estimate fails the configured guard
    (``gplr.min_audit_micro_f1``). The CLI prints the run's summary, then this one line on stderr, and exits
    with ``STATUS``, distinct from a user's mistake (2) and a crash (1), so a scheduled job can alert on it."""

    STATUS = 3

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary
