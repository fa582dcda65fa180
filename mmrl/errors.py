"""Exceptions raised by mmrl for problems a user can fix (bad data, bad config), as opposed to bugs, and
``read_text``, which turns the ways a file cannot be read into them."""
from __future__ import annotations

from pathlib import Path


class MMRLError(Exception):
    """Base class of every error mmrl raises on purpose."""


class DataError(MMRLError):
    """A data file is missing, unreadable or malformed; the message names the file."""


class ConfigError(MMRLError):
    """A configuration key or value is invalid; the message names the key and the valid choices."""


class NonFiniteError(MMRLError):
    """Too many training steps in a row had a NaN or infinite loss or gradient (``mmrl.nonfinite``); the message
    names the steps, the config key and what to look at."""


def read_text(path: str | Path, what: str, error: type[MMRLError] = DataError) -> str:
    """The text of the UTF-8 file ``path`` (a leading byte-order mark dropped). ``error`` (``DataError`` for data,
    ``ConfigError`` for configs) of one line naming the path when it is missing, a folder, unreadable, or not
    UTF-8 (then with the 1-based line of the first bad byte); ``what`` says what the file is ("annotation",
    "config", ...)."""
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{p}: is a folder, expected a {what} file")
        data = p.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} file not found: {p}") from None
    except (OSError, ValueError) as exc:  # permissions, a name too long, a NUL byte in the path, ...
        raise error(f"{p}: cannot read {what} file: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise error(f"{p}:{line}: {what} file is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
                    f"{exc.start})") from exc
