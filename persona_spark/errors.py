"""The one exception type for a user's mistake: what they asked for cannot run as given.

A bad configuration value, an unknown key, a missing table, column or path. The CLI prints its
message on one line and exits with status 2 (the traceback only with ``--debug``); any other
exception is a bug or an outage and keeps its traceback.
"""


class UserError(ValueError):
    """A mistake the user can fix from the message alone (it names the key, table, column or path)."""
