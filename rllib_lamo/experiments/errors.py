"""The root cause of a failed trial, for the last line of the command's output.

A trial's error reaches the driver wrapped: Tune's error around Ray's task error around Ray
Data's "user code" error around ours, with a retry hint and 100+ lines of traceback. What the
user needs is the innermost message raised by this package (it names the file and field,
e.g. "episodes-00003.parquet: field 'rewards' has NaN ..."). Exceptions that crossed
processes may arrive only as text, so the traceback text is searched too.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Iterator

PACKAGE = "rllib_lamo"
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line \d+')
_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(?P<type>\w+(?:Error|Exception)): (?P<message>.+)$")


def root_cause(error: BaseException) -> str:
    """The innermost message of ours in `error` (else its own last line), one line."""
    for candidate in reversed(list(_chain(error))):
        if _raised_by_us(candidate):
            return _first_line(str(candidate)) or type(candidate).__name__
    text = "\n".join(str(e) for e in _chain(error))
    return _ours_in_text(text) or _last_line(str(error)) or type(error).__name__


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it wraps (Ray's `.cause`, `__cause__`, `__context__`), outer first."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "cause", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                pending.append(inner)


def _raised_by_us(error: BaseException) -> bool:
    if type(error).__module__.split(".")[0] == PACKAGE:
        return True
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and f"/{PACKAGE}/" in frames[-1].filename


def _ours_in_text(text: str) -> str | None:
    """The first exception line raised in one of our frames (Python prints causes first)."""
    last_frame = ""
    for line in text.splitlines():
        if frame := _FRAME.match(line):
            last_frame = frame["file"]
        elif (found := _EXCEPTION_LINE.match(line.strip())) and f"/{PACKAGE}/" in last_frame:
            return found["message"].strip()
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
