"""The one base of the library's config dataclasses: ``to_dict`` / ``from_dict`` / ``replace``.

Every config of localscore is a frozen dataclass validated in ``__post_init__``; mixing in
:class:`ConfigMixin` gives it the same plain-dict round trip (tuples become lists and back, so the dict is
JSON-ready) and the same strict reading: unknown keys raise a :class:`~localscore.LocalScoreError` naming
them and the valid ones, and so do missing required fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from ._errors import describe, fail

__all__ = ["ConfigMixin"]

_C = TypeVar("_C", bound="ConfigMixin")


class ConfigMixin:
    """``to_dict`` / ``from_dict`` / ``replace`` for a (frozen) dataclass.

    Subclasses may set ``_from_dict_fix``, the fix line of the unknown-keys error.

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass(frozen=True)
        ... class Cfg(ConfigMixin):
        ...     name: str
        ...     sizes: tuple[int, ...] = (1, 2)
        >>> Cfg("a").to_dict()
        {'name': 'a', 'sizes': [1, 2]}
        >>> Cfg.from_dict({"name": "a", "sizes": [3]})
        Cfg(name='a', sizes=(3,))
        >>> try:
        ...     Cfg.from_dict({"name": "a", "size": 3})
        ... except ValueError as e:
        ...     print(str(e).splitlines()[0])
        Cfg.from_dict: unknown keys ['size']; expected some of ['name', 'sizes'].
    """

    _from_dict_fix: ClassVar[str] = "check the spelling of the keys."

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready Python values (top-level tuples become lists)."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any]) -> _C:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`~localscore.LocalScoreError`."""
        where = f"{cls.__name__}.from_dict"
        if not isinstance(data, Mapping):
            raise fail(where, f"expected a dict, got {describe(data)}.")
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        known = {f.name for f in fields}
        unknown = sorted(set(data) - known)
        if unknown:
            raise fail(where, f"unknown keys {unknown}; expected some of {sorted(known)}.", cls._from_dict_fix)
        missing = [f.name for f in fields if f.init and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise fail(where, f"missing keys {missing}; they have no default.", "add them to the dict.")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)

    def replace(self: _C, **changes: Any) -> _C:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
