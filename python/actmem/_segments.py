"""Which modules of an unmodified model become segments, and running them as segments.

A model's modules are named (``named_modules()``) the first time its outermost module is called;
those the rule picks become segments: their forward runs through ``_C.segment`` (Note [Segments by
class]). The rule:

- ``ACTMEM_SEGMENTS`` set: a regular expression that must match a module's whole qualified name,
  or a dotted tail of it (``layer\\d\\.\\d+`` matches ``layer1.0`` and, under DDP,
  ``module.layer1.0``);
- unset: the repeated blocks of ``nn.Sequential`` and ``nn.ModuleList`` containers, that is each
  child of such a container that has children of its own and whose class at least one sibling
  shares (ResNet's ``layer1.0``, a transformer's ``layers.3``).

Only the outermost of nested matches is a segment (the library flattens nested segments into one
anyway), and the outermost module itself never is."""

import collections
import re
import warnings
import weakref
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn

from . import _C, _tree


# Note [Segments by class]
# A segment module's class is swapped for a subclass of it whose forward runs the class's forward
# (or a forward the module had of its own, such as a torch.utils.checkpoint wrapper the script set)
# through _C.segment, as torch.nn.utils.parametrize does. The forward is the class's, so it runs
# on whichever module calls it: a copy (copy.copy, nn.DataParallel's replicas) runs its own
# parameters, not those of the module that was chosen. The segment's name lives in the module's
# __dict__. Pickled (torch.save of a whole model) or deep-copied, a segment module comes back as
# its plain class: segments are chosen again when the copy is first called.

_SEGMENT_CLASSES = {}


def _segment_forward(self, *args, **kwargs):
    plain = _plain_class(type(self))
    inner = self.__dict__.get("_actmem_inner_forward")
    inputs, rebuild_arguments = _tree.flatten((args, kwargs))
    forward = {"running": True}  # what the forward's run leaves for the result; reruns leave none

    def run(tensors):
        call_args, call_kwargs = rebuild_arguments(tensors)
        if inner is None:
            result = plain.forward(self, *call_args, **call_kwargs)
        else:
            result = inner(*call_args, **call_kwargs)
        outputs, rebuild = _tree.flatten(result)
        if forward["running"]:
            forward["rebuild"] = rebuild
        return outputs

    outputs = _C.segment(self.__dict__["_actmem_segment"], run, inputs, self)
    # `run` stays with the segment until its backward and must hold nothing of the result: an
    # object in it holding a tensor would tie the graph to itself.
    forward["running"] = False
    return forward.pop("rebuild")(outputs)


def _reduce_as_plain(self, protocol):
    state = {k: v for k, v in self.__dict__.items() if k != "_actmem_segment"}
    inner = state.pop("_actmem_inner_forward", None)
    if inner is not None:
        state["forward"] = inner
    return (_new_plain, (_plain_class(type(self)),), state)


def _new_plain(cls):
    return cls.__new__(cls)


def _plain_class(cls):
    return cls.__dict__["_actmem_plain_class"]


def _segment_class(cls):
    segment_class = _SEGMENT_CLASSES.get(cls)
    if segment_class is None:
        segment_class = type(cls.__name__, (cls,), {
            "forward": _segment_forward,
            "__reduce_ex__": _reduce_as_plain,
            "_actmem_plain_class": cls,
        })
        segment_class.__qualname__ = cls.__qualname__
        segment_class.__module__ = cls.__module__
        _SEGMENT_CLASSES[cls] = segment_class
    return segment_class


def is_segment(module: nn.Module) -> bool:
    return "_actmem_plain_class" in type(module).__dict__


def make_segment(module: nn.Module, name: str) -> bool:
    """Makes ``module`` the segment ``name``; False if it is one already."""
    if is_segment(module):
        return False
    own = module.__dict__.pop("forward", None)
    if own is not None:
        module.__dict__["_actmem_inner_forward"] = own
    module.__dict__["_actmem_segment"] = name
    module.__class__ = _segment_class(type(module))
    return True


def _matches(pattern: re.Pattern, name: str) -> bool:
    parts = name.split(".")
    return any(pattern.fullmatch(".".join(parts[i:])) for i in range(len(parts)))


def _repeated_blocks(modules: List[Tuple[str, nn.Module]]) -> Iterable[str]:
    for name, module in modules:
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        classes = collections.Counter(type(child) for _, child in children)
        for child_name, child in children:
            if classes[type(child)] >= 2 and next(child.children(), None) is not None:
                yield f"{name}.{child_name}" if name else child_name


def choose(root: nn.Module, pattern: Optional[re.Pattern]) -> List[Tuple[str, nn.Module]]:
    """The modules of ``root`` that the rule makes segments, outermost only, in model order."""
    modules = list(root.named_modules())
    if pattern is not None:
        candidates = {name for name, _ in modules if name and _matches(pattern, name)}
    else:
        candidates = set(_repeated_blocks(modules))
    chosen: List[Tuple[str, nn.Module]] = []
    for name, module in modules:
        if name not in candidates:
            continue
        if any(name.startswith(outer + ".") for outer, _ in chosen):
            continue
        chosen.append((name, module))
    return chosen


class Segmenter:
    """A global forward pre-hook: names each model's modules at its first call and makes the
    chosen ones segments. A model none of whose modules the rule picks gets a warning that names
    the modules it has."""

    def __init__(self, pattern: Optional[re.Pattern], source: str):
        self.pattern = pattern
        self.source = source  # how the rule was set, for the warning
        self._named = weakref.WeakSet()
        self.segments: List[str] = []

    def __call__(self, module: nn.Module, args) -> None:
        if module in self._named:
            return None
        modules = list(module.named_modules())
        for _, m in modules:
            self._named.add(m)
        if len(modules) == 1:
            return None  # a layer called on its own (a loss): nothing to choose from
        chosen = choose(module, self.pattern)
        for name, m in chosen:
            if make_segment(m, name):
                self.segments.append(name)
        if not chosen:
            shown = [name for name, _ in modules[1:13]]
            more = f" and {len(modules) - 13} more" if len(modules) > 13 else ""
            warnings.warn(
                f"actmem: {self.source} picks no module of {type(module).__name__} as a segment, "
                f"so none of its activations can be recomputed; its modules are "
                f"{', '.join(shown)}{more}",
                stacklevel=4,  # past Module._call_impl: the line that called the model
            )
        return None
