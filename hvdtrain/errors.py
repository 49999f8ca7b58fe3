"""The one family of user-facing errors: the CLI prints them on one line and exits 2."""


class UserError(Exception):
    """A problem with the user's input; the CLI prints the message on one line and exits 2."""


class ConfigError(UserError):
    """A config key, value or combination of values is invalid."""


class DataError(UserError):
    """A dataset path, file or its contents cannot be used."""
