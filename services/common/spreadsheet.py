"""CSV cells made safe to open in a spreadsheet: a cell that would start a formula is kept as text.

Every CSV the product writes (list and segment exports, the suppression export, import-error files,
the audit log) passes each cell through `formula_safe`. OWASP's rule: a cell starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is prefixed with a single quote, which Excel and
LibreOffice read as "this cell is text" and do not show. One exception, so that exports of number
fields stay numbers: a cell that is nothing but a decimal number (``-5``, ``+3.25``, ``-1e+20``) is
left as it is, since no spreadsheet reads a plain number as a formula. Anything else after the sign
(``-1+2``, ``+81 90-1234``, ``-cmd|...``) is prefixed. Full-width ``＝`` and the rest of Japanese
text are left alone: spreadsheets do not start formulas with them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def formula_safe(value: Any) -> Any:
    """The cell as a spreadsheet should show it: text that would start a formula gets a leading quote."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def formula_safe_row(row: Iterable[Any]) -> list[Any]:
    """A CSV row with every cell passed through formula_safe."""
    return [formula_safe(value) for value in row]
