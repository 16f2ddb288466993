"""Errors that the command line reports as one readable message, without a traceback."""


class VlddError(Exception):
    """A problem the user can fix: bad input, bad configuration, missing or corrupt files."""


class ConfigError(VlddError):
    """An invalid configuration value or an inconsistent combination of values."""


class DataError(VlddError):
    """Missing, unreadable or inconsistent data on disk."""


class ArtifactError(VlddError):
    """A stored trajectory, pair set, cache or checkpoint that is corrupt or does not match."""


class NonFiniteError(VlddError):
    """Training produced non-finite values too often to continue."""
