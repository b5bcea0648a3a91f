"""The one error family of localscore, and the helpers that write its messages."""

from __future__ import annotations

from typing import Any

__all__ = ["LocalScoreError"]


class LocalScoreError(ValueError):
    """Raised for every bad input to a localscore function.

    Messages name the argument, what was given, what was expected, and how to fix it.
    It subclasses :class:`ValueError`, so ``except ValueError`` keeps working.

    Examples:
        >>> import torch, localscore
        >>> try:
        ...     localscore.Conditions(torch.zeros(2, 3))
        ... except localscore.LocalScoreError as e:
        ...     print(str(e).splitlines()[0])
        Conditions: argument `pos` has shape (2, 3), expected [B, K, 2] (a batch of K (row, col) positions per image).
    """


def describe(value: Any) -> str:
    """A short description of ``value`` for an error message."""
    import torch

    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def fail(where: str, message: str, fix: str | None = None) -> LocalScoreError:
    """Build a :class:`LocalScoreError` whose message reads ``where: message`` and then ``fix``.

    Returned (not raised) so call sites read ``raise fail(...)`` and type checkers see the raise.
    """
    text = f"{where}: {message}"
    if fix:
        text += f"\n  Fix: {fix}"
    return LocalScoreError(text)
