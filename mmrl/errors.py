"""Exceptions raised by mmrl for problems a user can fix (bad data, bad config), as opposed to bugs."""


class MMRLError(Exception):
    """Base class of every error mmrl raises on purpose."""


class DataError(MMRLError):
    """A data file is missing, unreadable or malformed; the message names the file."""


class ConfigError(MMRLError):
    """A configuration key or value is invalid; the message names the key and the valid choices."""


class NonFiniteError(MMRLError):
    """Too many training steps in a row had a NaN or infinite loss or gradient (``mmrl.nonfinite``); the message
    names the steps, the config key and what to look at."""
