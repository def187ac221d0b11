"""The one exception type of the image builder."""

from __future__ import annotations


class ImageBuildError(Exception):
    """A build step failed; `hint` tells the user what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message
