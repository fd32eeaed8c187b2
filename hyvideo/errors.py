"""The error types every layer raises, at the bottom of the package (this module imports nothing of ours).

- `UsageError`: bad input from the user (a flag, a prompt file, an API argument); exit code 2, one line.
- `ConfigError`: an invalid model configuration (a preset or a config.json beside the weights); exit code 2.
- `CheckpointError`: a weight file or folder that cannot be used; exit code 2.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad command-line input. `flag` names the offending flag (or None); `message` says what is valid."""

    def __init__(self, flag: str | None, message: str) -> None:
        self.flag = flag
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.flag}: {self.message}" if self.flag else self.message
        return " ".join(text.split())  # always one line, whatever the user typed


class ConfigError(ValueError):
    """An invalid model configuration; the message names the field and what is valid."""


class CheckpointError(Exception):
    """A weight file or directory that cannot be used; the message is one line naming the file and the problem."""
