"""The tensors in a module call's arguments or result, and how to put them back.

A segment (``_C.segment``) takes and returns flat lists of tensors; a module takes and returns
nested containers and other values. ``flatten`` separates the tensors from the rest through
PyTorch's own pytree (tuples, lists, dicts and their subclasses PyTorch knows, namedtuples, and
whatever a library registered, such as Hugging Face's ModelOutput); the function it returns rebuilds
the same structure around other tensors (a rerun's). Anything else is a leaf, passed as it is:
tensors inside such an object are neither inputs nor outputs of the segment."""

from typing import Any, Callable, List, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree


def flatten(value: Any) -> Tuple[List[torch.Tensor], Callable[[Sequence[torch.Tensor]], Any]]:
    """The tensors in ``value``, in order, and a function that rebuilds ``value`` with the
    tensors it is given in their places (everything else as it was)."""
    leaves, spec = pytree.tree_flatten(value)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]

    def rebuild(tensors: Sequence[torch.Tensor]) -> Any:
        filled = list(leaves)
        for i, tensor in zip(where, tensors):
            filled[i] = tensor
        return pytree.tree_unflatten(filled, spec)

    return [leaves[i] for i in where], rebuild
