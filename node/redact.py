"""No element value of an input in a log line or a job reason.

What a sender puts into a data set (names, dates, IDs, free text, and garbage where a sloppy
sender put patient data into the wrong attribute) must not reach the node's log or its job
records: people read them, they are shipped to log stores, and they are kept longer than the
images. Our own messages name an attribute by keyword and tag; the texts of exceptions raised
by pydicom and highdicom, and pydicom's validation warnings, quote values
(``Invalid value for VR DA: '1950-01-12'``, ``invalid literal for int() with base 10: 'abc'``).

* :func:`redact` replaces every quoted or bytes literal in such a text by ``<value>``; use it
  on any library message that goes into a log line or a job reason (:func:`describe_error`
  does it for an exception).
* :func:`install` (called once by the node and the CLI, from the main thread, idempotent) puts
  a :class:`RedactValues` filter on pydicom's logger and stops pydicom's duplicate
  ``warnings.warn`` of the same messages (pydicom's ``warn_and_log`` sends each to its logger
  *and* to :mod:`warnings`, whose default handler prints it to stderr, i.e. the service's log).
  pydicom's own configuration (its validation modes) is left as it is: it is process-wide and
  the SCP reads data sets from many threads at once.
"""
from __future__ import annotations

import logging
import re
import warnings

# 'x', "x", b'x', b"x" (with escaped quotes inside); words in quotes such as 'DA' are values too;
# <x> is how dciodvfy quotes a value ("Value = <1950-01-12>").
_QUOTED = re.compile(r"""b?'(?:[^'\\\n]|\\.)*'|b?"(?:[^"\\\n]|\\.)*"|<[^<>\n]*>""")
PLACEHOLDER = "<value>"


def redact(text: str) -> str:
    """``text`` with every quoted literal replaced by ``<value>``."""
    return _QUOTED.sub(PLACEHOLDER, str(text))


def describe_error(exc: BaseException) -> str:
    """``TypeName: message`` of an exception, its quoted values redacted."""
    message = redact(str(exc)).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class RedactValues(logging.Filter):
    """A logging filter that redacts the quoted values in every record's message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install() -> None:
    """Redact pydicom's log messages and silence its duplicate warnings (idempotent)."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, RedactValues) for f in logger.filters):
        logger.addFilter(RedactValues())
    # The same texts, unredacted, through warnings.warn: pydicom's logger already has them.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
