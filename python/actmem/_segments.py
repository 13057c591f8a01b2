"""Which modules of an unmodified model become segments, and running them as segments.

A model's modules are named (``named_modules()``) the first time its outermost module is called;
those the rule picks become segments: their forward runs through ``_C.segment`` (Note [Segments as a
forward of their own]). The rule:

- ``ACTMEM_SEGMENTS`` set: a regular expression that must match a module's whole qualified name,
  or a dotted tail of it (``layer\\d\\.\\d+`` matches ``layer1.0`` and, under DDP,
  ``module.layer1.0``);
- unset: the repeated blocks of ``nn.Sequential`` and ``nn.ModuleList`` containers, that is each
  child of such a container that has children of its own and whose class at least one sibling
  shares (ResNet's ``layer1.0``, a transformer's ``layers.3``).

Only the outermost of nested matches is a segment (the library flattens nested segments into one
anyway), and the outermost module itself never is."""

import collections
import contextlib
import copy
import inspect
import re
import sys
import warnings
import weakref
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import _C, _tree


# Note [Segments as a forward of their own]
# A segment module gets an instance attribute `forward` (SegmentForward) that runs what its forward
# was (the class's, or a forward the module had of its own, such as a torch.utils.checkpoint
# wrapper the script set) through _C.segment. Its class stays what it was: code that tests
# `type(m) is Block` (a parameter group, an init function) sees no difference. (Swapping the
# class, as torch.nn.utils.parametrize does, was tried: such a test then silently picked no
# module, and training diverged.) What an instance attribute costs, and how it is paid:
# - the attribute names its module, so a copy of the module's __dict__ would run the original:
#   copy.deepcopy maps it to the copy (__deepcopy__), nn.DataParallel's replicas get their own
#   (Module._replicate_for_data_parallel is wrapped at enable()); a shallow copy.copy still runs
#   the original, as a bound method stored the same way would;
# - a whole-module pickle (torch.save(model)) holds it, and loading needs actmem importable.
# A rerun starts from the attributes the forward began with (a tensor the block cached on itself
# in the step before, `self.cache = y.detach()`, is read as the forward read it) and puts back
# those the forward left (`self.h = …; self.h.retain_grad()`: the tensors the forward left there
# are the ones in the graph), registered buffers included. Shallowly: a tensor attribute changed
# in place is not undone (buffers changed in place are: the C++ half restores their values).


# Note [Segments under torch.compile]
# Code torch.compile traces runs each segment as a plain module: the segment's forward is traced
# into the compiled graph, not run through _C.segment. A rerun in backward could not repeat that
# code's bits (it would run eagerly, on other kernels, with other random numbers), and Dynamo
# cannot trace _C.segment anyway. The compiled graph's saved tensors still pass through actmem's
# saved-tensor hooks (AOTAutograd saves them with save_for_backward): kept or offloaded by the
# policy, and a program trains to the bits it does under torch.compile without actmem. What the
# compiled code saves is therefore never recomputed; the Segmenter warns once when a model, or one
# of its segments, it names is compiled and the policy could recompute.

# Saved-tensor hooks a rerun pushes, on whatever thread runs it: PyTorch's default hooks are
# thread-local, so a backward run on another thread (threading.Thread(target=loss.backward)), or
# after actmem.disable(), reran without actmem's and its tensors were never captured. A pair of
# their own (not enable()'s, whose last copies the exit handler waits for); their pack captures
# for the rerun in progress.
_rerun_hooks = None


def _hooks_for_reruns():
    global _rerun_hooks
    if _rerun_hooks is None:
        _rerun_hooks = _C.make_hooks()
    return _rerun_hooks


def _buffers_of(m: nn.Module):
    """A module's registered buffers as a dict it can be compared with and put back into; None
    for a TorchScript module, whose buffers are not Python's to rebind."""
    return None if isinstance(m, torch.jit.ScriptModule) else m._buffers


def _attributes(module: nn.Module):
    """Each module's attributes and registered buffers (a buffer rebound in the forward,
    ``self.running = self.running * 0.9 + …``, changes ``_buffers``, not ``__dict__``)."""
    saved = []
    for m in module.modules():
        buffers = _buffers_of(m)
        saved.append((m, dict(m.__dict__), None if buffers is None else dict(buffers)))
    return saved


def _restore(namespace: dict, values: dict) -> None:
    for key in [k for k in namespace if k not in values]:
        del namespace[key]
    namespace.update(values)


def _put_back(saved) -> None:
    for m, attributes, buffers in saved:
        _restore(m.__dict__, attributes)
        if buffers is not None:
            _restore(m._buffers, buffers)


_ABSENT = object()


def _changes(before: dict, now: dict) -> dict:
    diff = {k: v for k, v in before.items() if now.get(k, _ABSENT) is not v}
    diff.update({k: _ABSENT for k in now if k not in before})
    return diff


def _rebound(before):
    """What a forward changed of ``before`` (_attributes as it began): for each module, every
    attribute and buffer it rebound, added or removed, with its value before (_ABSENT: added).
    Only these are held until the segment's backward, not every attribute the modules have."""
    changed = []
    for m, attributes, buffers in before:
        diff = _changes(attributes, m.__dict__)
        buffer_diff = {} if buffers is None else _changes(buffers, m._buffers)
        if diff or buffer_diff:
            changed.append((m, diff, buffer_diff))
    return changed


def _undo(changed) -> None:
    for m, diff, buffer_diff in changed:
        for namespace, values in ((m.__dict__, diff), (m._buffers, buffer_diff)):
            for key, value in values.items():
                if value is _ABSENT:
                    namespace.pop(key, None)
                else:
                    namespace[key] = value


def _run_forward(module: nn.Module, inner, args, kwargs):
    """What a segment module's forward was: ``inner``, a forward the module had of its own, else
    its class's."""
    if inner is None:
        return type(module).forward(module, *args, **kwargs)
    return inner(*args, **kwargs)


class SegmentForward:
    """A module's ``forward`` run as the actmem segment ``name`` (Note [Segments as a forward of
    their own]): the tensors among its arguments are the segment's inputs, those in its result its
    outputs. ``inner`` is the forward it runs: one the module had of its own, else None for its
    class's."""

    def __init__(self, name: str, module: nn.Module, inner=None):
        self.name = name
        self.module = module
        self.inner = inner
        # What inspect.signature(module.forward) reads: the forward's own parameters (callers that
        # pick the keyword arguments to pass by it, as Hugging Face and diffusers code does).
        try:
            self.__signature__ = inspect.signature(
                inner if inner is not None else type(module).forward.__get__(module))
        except (TypeError, ValueError):  # a forward without one (a builtin)
            pass

    def __call__(self, *args, **kwargs):
        module = self.module
        inner = self.inner
        if torch.compiler.is_compiling():
            # Traced by torch.compile (Note [Segments under torch.compile]): the plain forward.
            return _run_forward(module, inner, args, kwargs)
        inputs, rebuild_arguments = _tree.flatten((args, kwargs))
        forward = {"running": True}  # the forward's run leaves the result's shape; reruns none

        def run(tensors):
            # The forward gets the very arguments it was called with (a list it appends to is the
            # caller's); a rerun, copies of their containers around the tensors it is given.
            if forward["running"]:
                call_args, call_kwargs = args, kwargs
            else:
                call_args, call_kwargs = rebuild_arguments(tensors)
            # The forward's attributes as it began: a rerun reads them as the forward did (a
            # tensor the block cached on itself last step and rebinds now), and the ones the
            # forward left are put back after it.
            if forward["running"]:
                before, saved = _attributes(module), None
            else:
                saved = _attributes(module)
                _undo(forward["rebound"])
            try:
                with (contextlib.nullcontext() if forward["running"]
                      else torch.autograd.graph.saved_tensors_hooks(*_hooks_for_reruns())):
                    result = _run_forward(module, inner, call_args, call_kwargs)
            finally:
                if saved is None:
                    forward["rebound"] = _rebound(before)
                else:
                    _put_back(saved)
            outputs, rebuild = _tree.flatten(result)
            if forward["running"]:
                forward["rebuild"] = rebuild
            return outputs

        # `run` stays with the segment until its backward and must hold nothing of the result: an
        # object in it holding a tensor would tie the graph to itself (through the frame that holds
        # `run`, which Python's collector cannot see). So too when the segment fails after its
        # forward returned (out of memory reading the generators, say): no rerun comes then.
        try:
            outputs = _C.segment(self.name, run, inputs, module)
        except BaseException:
            forward.pop("rebuild", None)
            forward.pop("rebound", None)
            raise
        forward["running"] = False
        return forward.pop("rebuild")(outputs)

    def for_module(self, module: nn.Module) -> "SegmentForward":
        return SegmentForward(self.name, module, self.inner)

    def __deepcopy__(self, memo):
        return SegmentForward(self.name, copy.deepcopy(self.module, memo),
                              copy.deepcopy(self.inner, memo))

    def __reduce__(self):
        return (SegmentForward, (self.name, self.module, self.inner))

    def __repr__(self):
        return f"actmem.SegmentForward({self.name!r})"


def is_segment(module: nn.Module) -> bool:
    return isinstance(module.__dict__.get("forward"), SegmentForward)


def make_segment(module: nn.Module, name: str) -> bool:
    """Makes ``module`` the segment ``name``; False if it is one already."""
    if is_segment(module):
        return False
    module.forward = SegmentForward(name, module, module.__dict__.get("forward"))
    return True


def replicas_run_their_own_segments() -> None:
    """Wraps Module._replicate_for_data_parallel (once) so that an nn.DataParallel replica of a
    segment module runs itself, not the module it was copied from."""
    replicate = getattr(nn.Module, "_replicate_for_data_parallel", None)
    if replicate is None or getattr(replicate, "_actmem", False):
        return

    def replicate_with_segment(self):
        replica = replicate(self)
        forward = replica.__dict__.get("forward")
        if isinstance(forward, SegmentForward):
            replica.__dict__["forward"] = forward.for_module(replica)
        return replica

    replicate_with_segment._actmem = True
    nn.Module._replicate_for_data_parallel = replicate_with_segment


def _matches(pattern: re.Pattern, name: str) -> bool:
    parts = name.split(".")
    return any(pattern.fullmatch(".".join(parts[i:])) for i in range(len(parts)))


def _block_class(module: nn.Module) -> type:
    """The class a block was written as: a parametrization on its own parameters gives each
    instance a class of its own (ParametrizedBlock, a subclass of Block)."""
    return type(module).__mro__[1] if parametrize.is_parametrized(module) else type(module)


def _has_own_children(module: nn.Module) -> bool:
    """Whether it is a block, not a layer: children besides the ``parametrizations`` that
    weight_norm and spectral_norm hang on a layer."""
    return any(name != "parametrizations" for name, _ in module.named_children())


def _repeated_blocks(modules: List[Tuple[str, nn.Module]]) -> Iterable[str]:
    for name, module in modules:
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = list(module.named_children())
        classes = collections.Counter(_block_class(child) for _, child in children)
        for child_name, child in children:
            if classes[_block_class(child)] >= 2 and _has_own_children(child):
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
        self._warned = weakref.WeakSet()  # models warned of compiled segments
        self.segments: List[str] = []

    def __call__(self, module: nn.Module, args) -> None:
        if torch.compiler.is_compiling():
            return None  # traced by torch.compile: the WeakSet is nothing Dynamo can trace
        if module in self._named:
            return None
        wrapped = _compiled_module(module)
        if wrapped is None:
            # Warnings go to the line that called the model: past Module._call_impl and its
            # inner() (4 frames above this one).
            self._name(module, stacklevel=5)
            self._warn_if_compiled(module, whole=False, stacklevel=5)
            return None
        # torch.compile(model) calls the global hooks for its wrapper (one frame more), then
        # compiles the model's own call, where they are traced (above): the model is named from
        # here, unless an eager call named it before.
        self._named.add(module)
        if wrapped not in self._named:
            self._name(wrapped, stacklevel=6)
        self._warn_if_compiled(wrapped, whole=True, stacklevel=6)
        return None

    def _name(self, module: nn.Module, stacklevel: int) -> None:
        """Names ``module``'s modules and makes those the rule picks segments; warns (at
        ``stacklevel`` above the caller) when it picks none."""
        modules = list(module.named_modules())
        for _, m in modules:
            self._named.add(m)
        if len(modules) == 1 or isinstance(module, parametrize.ParametrizationList):
            # A layer called on its own (a loss), or a parametrization computing its parameter
            # (even before the model's first call): nothing to choose from, and not a model.
            return
        chosen = choose(module, self.pattern)
        for name, m in chosen:
            if make_segment(m, name):
                self.segments.append(name)
        if not chosen:
            shown = [name for name, _ in modules[1:13]]
            more = f" and {len(modules) - 13} more" if len(modules) > 13 else ""
            _warn(f"actmem: {self.source} picks no module of {type(module).__name__} as a "
                  f"segment, so none of its activations can be recomputed; its modules are "
                  f"{', '.join(shown)}{more}", stacklevel + 1)

    def _warn_if_compiled(self, model: nn.Module, whole: bool, stacklevel: int) -> None:
        """Warns once per model, where the policy could recompute, that the segments of ``model``
        that compiled code runs (all of them when ``whole``; else those inside a module compiled
        on its own, by torch.compile or module.compile()) are not recomputed (Note [Segments under
        torch.compile])."""
        if model in self._warned or not _C.recomputes():
            return
        compiled = [] if whole else [name for name, m in model.named_modules()
                                     if _compiled_module(m) is not None or _is_compiled(m)]
        names = [m.__dict__["forward"].name for name, m in model.named_modules()
                 if is_segment(m) and (whole or any(name == prefix or name.startswith(prefix + ".")
                                                    for prefix in compiled))]
        if not names:
            return
        self._warned.add(model)
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        _warn(f"actmem: torch.compile compiles the segments {shown}: compiled code runs them as "
              "plain modules, so the activations it saves are kept or offloaded, never recomputed "
              "(segments recompute where they run eagerly)", stacklevel + 1)


def _warn(message: str, stacklevel: int) -> None:
    """Warns at the line ``stacklevel`` frames above the caller."""
    try:
        warnings.warn(message, stacklevel=stacklevel + 1)
    except Warning:  # warnings turned into errors: the script's call must not fail
        print(message, file=sys.stderr)


def _compiled_module(module: nn.Module) -> Optional[nn.Module]:
    """The model torch.compile(model) wrapped, when ``module`` is such a wrapper; else None.
    (Looked up without importing torch._dynamo: no wrapper exists before it is imported.)"""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    if wrapper is not None and isinstance(module, wrapper):
        return module._orig_mod
    return None


def _is_compiled(module: nn.Module) -> bool:
    """Whether calling ``module`` runs compiled code: module.compile() was called on it."""
    return getattr(module, "_compiled_call_impl", None) is not None
