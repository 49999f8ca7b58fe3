"""User-facing errors: the CLI prints them on one line, no traceback, and exits with their `exit_code`."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints the message on one line and exits 2."""

    exit_code = 2
    # Under a launcher every rank writes its line, then waits for the others' before exiting
    # (hvdtrain/distributed/error_exit.py); these record that it did.
    waits_for_peers = True
    announced = False
    peers_waited = False


class JobAborted(UserError):
    """The job cannot go on for a reason outside this rank's input (a stalled or failed peer); exit 1."""

    exit_code = 1
    waits_for_peers = False  # the peer it would wait for is gone


class ConfigError(UserError):
    """A config key, value or combination of values is invalid."""


class DataError(UserError):
    """A dataset path, file or its contents cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that cannot be used for this run."""
