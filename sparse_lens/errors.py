"""The one exception type for mistakes a user can make.

Every error a user can cause (a bad path, a malformed config, task or circuit file, a corrupt
checkpoint, a vocabulary mismatch, out-of-range token ids, an empty corpus) is raised as
:class:`SparseLensError`, with a message that names the file or field and says what to do. The
CLI turns it into one line on stderr and exit code 2. Internal bugs stay ordinary tracebacks.
"""

from __future__ import annotations

from pathlib import Path


class SparseLensError(ValueError):
    """A problem with the user's input, explained in one line.

    Subclasses ValueError so that ``except ValueError`` code written against plain configs keeps
    working.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.field = field
        prefix = ""
        if self.path is not None:
            prefix += f"{self.path}: "
        if field is not None:
            prefix += f"field '{field}': "
        super().__init__(prefix + message)
