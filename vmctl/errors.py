"""The one exception type the host side raises for things a user can act on."""

from __future__ import annotations


class VmctlError(Exception):
    """An error with a message and a hint; the CLI prints both, never a traceback.

    ``detail`` holds extra lines worth showing (a console tail, a command's stderr).
    """

    def __init__(self, message: str, hint: str = "", detail: str = "", exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.detail = detail
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
