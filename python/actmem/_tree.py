"""The tensors in a module call's arguments or result, and how to put them back.

A segment (``_C.segment``) takes and returns flat lists of tensors; a module takes and returns
nested tuples, lists, dicts and other values. ``flatten`` separates the tensors from the rest;
the function it returns rebuilds the same structure around other tensors (a rerun's)."""

from typing import Any, Callable, List, Sequence, Tuple

import torch

_TENSOR = object()


def _spec(value: Any, tensors: List[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _TENSOR
    if isinstance(value, (tuple, list)):
        return (type(value), [_spec(v, tensors) for v in value])
    if isinstance(value, dict):
        return (type(value), {k: _spec(v, tensors) for k, v in value.items()})
    return ("leaf", value)


def _build(spec: Any, tensors: Any) -> Any:
    if spec is _TENSOR:
        return next(tensors)
    kind, items = spec
    if kind == "leaf":
        return items
    if isinstance(items, dict):
        return kind((k, _build(v, tensors)) for k, v in items.items())
    values = [_build(v, tensors) for v in items]
    if hasattr(kind, "_fields"):  # a namedtuple
        return kind(*values)
    return kind(values)


def flatten(value: Any) -> Tuple[List[torch.Tensor], Callable[[Sequence[torch.Tensor]], Any]]:
    """The tensors in ``value``, in order, and a function that rebuilds ``value`` with the
    tensors it is given in their places (everything else as it was)."""
    tensors: List[torch.Tensor] = []
    spec = _spec(value, tensors)
    return tensors, lambda replacement: _build(spec, iter(replacement))
