"""Short reprs for objects that hold tensors: a summary per tensor instead of its values.

A failing assertion, a Hypothesis report or a log line that prints a result object should not print a
``[B, K, H, W]`` influence map. :func:`summary_repr` gives a dataclass a ``__repr__`` (and the
``_repr_pretty_`` that Hypothesis and IPython prefer over ``__repr__``) that shows each tensor field as its
shape, dtype, device and largest magnitude with its index; other fields print as usual, and dicts, lists and
tuples are summarised element by element.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

__all__ = ["summarize", "summary_repr", "tensor_summary"]

_T = TypeVar("_T", bound=type)


def _num(v: float) -> str:
    return f"{v:.4g}"


def tensor_summary(t: Any) -> str:
    """One line for a tensor: ``<Tensor [shape] dtype device, max|x|=... at [index]>``, never its values.

    NaN and infinite entries are counted (the maximum is over the finite ones); a one-element tensor shows
    its value; a bool tensor shows how many entries are True; an empty or a ``meta`` tensor shows no values.

    Examples:
        >>> import torch
        >>> x = torch.zeros(64, 64)
        >>> x[3, 17] = -2.5
        >>> tensor_summary(x)
        '<Tensor [64, 64] float32 cpu, max|x|=2.5 at [3, 17]>'
        >>> tensor_summary(torch.tensor([1.0, float("nan")], dtype=torch.float64))
        '<Tensor [2] float64 cpu, max|x|=1 at [0], 1 nan>'
        >>> tensor_summary(torch.tensor(0.25))
        '<Tensor [] float32 cpu, value=0.25>'
        >>> tensor_summary(torch.tensor([[True, False], [True, True]]))
        '<Tensor [2, 2] bool cpu, true=3 of 4>'
    """
    import torch

    head = f"Tensor {list(t.shape)} {str(t.dtype).removeprefix('torch.')} {t.device}"
    if t.layout != torch.strided:
        head += f" {str(t.layout).removeprefix('torch.')}"
    if t.requires_grad:
        head += " requires_grad"
    return f"<{head}{_tensor_values(t, torch)}>"


def _tensor_values(t: Any, torch: Any) -> str:
    n = t.numel()
    if n == 0:
        return ", empty"
    if t.device.type == "meta" or t.layout != torch.strided:
        return ""
    try:
        v = t.detach()
        if n == 1:
            return f", value={_num(v.item()) if v.is_floating_point() or v.is_complex() else v.item()}"
        if v.dtype == torch.bool:
            return f", true={int(v.sum())} of {n}"
        a = (v if v.is_floating_point() or v.is_complex() else v.double()).abs()  # int8 -128 overflows abs
        finite = torch.isfinite(a)
        text = ""
        if bool(finite.any()):
            flat = torch.where(finite, a, torch.zeros((), dtype=a.dtype, device=a.device)).flatten()
            i = int(flat.argmax())
            index = []
            for size in reversed(t.shape):
                index.append(i % size)
                i //= size
            text = f", max|x|={_num(float(flat.max()))} at {index[::-1]}"
        nan = int(torch.isnan(v).sum()) if v.is_floating_point() or v.is_complex() else 0
        inf = n - nan - int(finite.sum())
        text += f", {nan} nan" if nan else ""
        text += f", {inf} inf" if inf else ""
        return text
    except Exception:  # a repr must not raise (e.g. a tensor under vmap or of an exotic subclass)
        return ""


def summarize(value: Any) -> str:
    """The repr of ``value`` with every tensor in it (in dicts, lists and tuples too) replaced by its summary.

    Examples:
        >>> import torch
        >>> summarize({"a": torch.ones(2, 3), "b": 0.5})
        "{'a': <Tensor [2, 3] float32 cpu, max|x|=1 at [0, 0]>, 'b': 0.5}"
        >>> summarize((1.0, 2.0))
        '(1.0, 2.0)'
    """
    import torch

    if isinstance(value, torch.Tensor):
        return tensor_summary(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {summarize(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in value):
        inner = ", ".join(summarize(v) for v in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    return repr(value)


def _dataclass_repr(self: Any) -> str:
    parts = (f"{f.name}={summarize(getattr(self, f.name))}" for f in fields(self) if f.repr)
    return f"{type(self).__qualname__}({', '.join(parts)})"


def _repr_pretty_(self: Any, printer: Any, cycle: bool) -> None:
    printer.text(repr(self))


def summary_repr(cls: _T) -> _T:
    """Class decorator: give a dataclass a ``__repr__`` that summarises its tensors (see :func:`summarize`).

    Put it above ``@dataclass`` (which would otherwise replace the ``__repr__``). It also sets
    ``_repr_pretty_``, which Hypothesis's failure reports and IPython use in preference to ``__repr__``.

    Examples:
        >>> import torch
        >>> from dataclasses import dataclass
        >>> @summary_repr
        ... @dataclass(frozen=True)
        ... class Result:
        ...     values: torch.Tensor
        ...     name: str
        >>> Result(torch.arange(4096.0).reshape(64, 64), "ramp")
        Result(values=<Tensor [64, 64] float32 cpu, max|x|=4095 at [63, 63]>, name='ramp')
    """
    if not is_dataclass(cls):
        raise TypeError(f"summary_repr decorates dataclasses (put it above @dataclass), got {cls!r}")
    cls.__repr__ = _dataclass_repr  # type: ignore[method-assign]
    cls._repr_pretty_ = _repr_pretty_  # type: ignore[attr-defined]
    return cls
