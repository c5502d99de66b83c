"""The one kind of failure the audit explains: `AuditError`, a message of one line for a person.

The CLI prints it as ``error: <message>`` and exits with status 1; the App's plugin shows it as a
notification. Each job raises its own subclass (``SourceError``, ``ModelError``, ...), so a caller
may catch one kind, but nothing needs to know them all."""

from __future__ import annotations


class AuditError(Exception):
    """A failure the user can act on; ``str(error)`` is one line saying what happened and what to do."""


class OptionError(AuditError):
    """An option the command cannot take as given (``option`` names it): a usage error, exit status 2."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


class InputError(AuditError):
    """A file the user gave that does not fit (classes, predictions, a model config): refused before
    anything is written, exit status 2."""


def first_line(error: BaseException, limit: int = 160) -> str:
    """An exception's message cut to its first line (and pymongo's long tail dropped), or its type's name."""
    text = str(error).strip()
    text = text.split(" (configured timeouts")[0].split(", Timeout: ")[0]
    return (text.splitlines()[0] if text else type(error).__name__)[:limit]
