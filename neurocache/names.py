"""File names that are not valid UTF-8 (Latin-1 bytes from Windows shares, old PACS exports).

On POSIX a file name is bytes; Python hands bytes that are not valid UTF-8 over as lone surrogates
(PEP 383: ``b"caf\\xe9"`` -> ``"caf\\udce9"``), which no UTF-8 output (Parquet, JSON, a CSV, the
terminal) can hold. These helpers say whether a name is such a name and show it as valid UTF-8.
"""

from __future__ import annotations

import os


def bad_name(name: str) -> bool:
    """True when a file name (as ``os.listdir`` gives it) is not valid UTF-8.

    Python decodes such bytes to lone surrogates (PEP 383), which no UTF-8 output (Parquet, JSON,
    a CSV, the terminal) can hold.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def shown_name(name: str) -> str:
    """A name (or path, or message holding one) as valid UTF-8 text: the bytes that are not valid
    UTF-8 escaped as ``\\xNN`` (``ID_caf\\xe9.dcm``), every other character kept; valid names unchanged."""
    if not bad_name(name):
        return name
    try:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that did not come from the file system
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
