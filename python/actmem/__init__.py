"""actmem: activation memory for PyTorch training.

Every tensor autograd saves for backward is kept, recomputed through a segment, or offloaded to
host memory and brought back, as a policy decides within a memory budget. The same C++ library as
actmem's C++ API does the work; this package reaches it through PyTorch's own saved-tensor hooks
(PyTorch's autograd engine is not replaced).

From the command line, for a script that was not changed::

    ACTMEM_POLICY=recompute ACTMEM_BUDGET=6GiB python -m actmem train.py --epochs 1

In code::

    import actmem
    actmem.enable(policy="auto", budget="6GiB")
    ...  # build the model and train as usual
    print(actmem.stats()["activations"])

The environment variables (``ACTMEM_POLICY``, ``ACTMEM_BUDGET``, ``ACTMEM_HOST_BUDGET``,
``ACTMEM_LOG``, ``ACTMEM_SEGMENTS``, ``ACTMEM_STATS`` and the rest) are described in the README.
"""

import atexit
import json
import os
import re
import threading
import time
import weakref
from typing import Optional, Union

import torch  # loads LibTorch, which _C links against

from . import _C
from ._segments import Segmenter, make_segment, replicas_run_their_own_segments

__all__ = ["enable", "disable", "enabled", "segment", "segments", "stats", "device"]
__version__ = "0.1.0"

_state = None  # what enable() set up: the hooks context, the pre-hook's handle, the segmenter


def _segments_rule(segments: Optional[str]):
    """The compiled ACTMEM_SEGMENTS (or ``segments``) and how it was given, for messages."""
    if segments is None:
        segments = os.environ.get("ACTMEM_SEGMENTS")
        source = f"ACTMEM_SEGMENTS={segments!r}"
    else:
        source = f"segments={segments!r}"
    if segments is None or segments == "":
        return None, "the default rule (repeated blocks of nn.Sequential and nn.ModuleList)"
    try:
        return re.compile(segments), source
    except re.error as error:
        raise ValueError(
            f"actmem: {source} is not a regular expression: {error}"
        ) from None


def enable(
    policy: Optional[str] = None,
    budget: Optional[Union[int, str]] = None,
    host_budget: Optional[Union[int, str]] = None,
    segments: Optional[str] = None,
    log: Optional[str] = None,
) -> None:
    """Turns actmem on for the calling thread, for every model called from then on.

    Each argument left as None is read from its environment variable: ``policy``
    (ACTMEM_POLICY: keep, recompute, chain, offload or auto), ``budget`` (ACTMEM_BUDGET: device
    bytes, such as 6GiB), ``host_budget`` (ACTMEM_HOST_BUDGET, 0 for no offload), ``segments``
    (ACTMEM_SEGMENTS: a regular expression over module names), ``log`` (ACTMEM_LOG).

    On CUDA, actmem's allocator becomes PyTorch's CUDA allocator: call this before the first CUDA
    tensor. Raises ValueError naming a malformed value, before anything is installed; RuntimeError
    when PyTorch's CUDA allocator is already in use."""
    global _state
    if _state is not None:
        raise RuntimeError("actmem: enable() was called already; call disable() first")
    pattern, source = _segments_rule(segments)
    overrides = {}
    for name, value in (
        ("ACTMEM_POLICY", policy),
        ("ACTMEM_BUDGET", budget),
        ("ACTMEM_HOST_BUDGET", host_budget),
        ("ACTMEM_LOG", log),
    ):
        if value is not None:
            overrides[name] = str(value)
    _C.enable(overrides)
    pack, unpack = _C.make_hooks()
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
    hooks.__enter__()
    global _hooks_in_use
    _hooks_in_use = weakref.ref(pack)
    replicas_run_their_own_segments()
    segmenter = Segmenter(pattern, source)
    # Traced by torch.compile, the hook returns at once (Note [Segments under torch.compile]).
    # Not wrapped in torch.compiler.disable, which also kept Dynamo out of it: with that, 3 of 52
    # two-process gloo DDP runs hung at exit, against 0 of 40 without (Note [Hooks held by other
    # threads at exit]).
    handle = torch.nn.modules.module.register_module_forward_pre_hook(segmenter)
    _state = (hooks, handle, segmenter, threading.get_ident())


def disable() -> None:
    """Turns actmem off (on the thread that enabled it). Segments already chosen stay segments,
    which run as plain modules while actmem is off; the allocator stays installed."""
    global _state
    if _state is None:
        return
    hooks, handle, _, thread = _state
    if threading.get_ident() != thread:
        raise RuntimeError("actmem: disable() must be called on the thread that called enable()")
    handle.remove()
    hooks.__exit__(None, None, None)
    _C.disable()
    _state = None


# Note [Hooks held by other threads at exit]
# PyTorch copies the thread-local state, the default saved-tensor hooks included, into work it
# hands to other threads: autograd's, and gloo's AsyncWork under DistributedDataParallel. The last
# copy may be released by such a thread after the interpreter began to finalize; releasing a Python
# object takes the GIL, which then ends the thread through pthread_exit, and that unwinding through
# C++ code kills the process (std::terminate, exit status -6) after the script succeeded. So at
# exit, before finalization, actmem pops its hooks and waits (at most 10 s) until no copy of them is
# left anywhere. (Found with 2-process gloo DDP runs: about 1 in 8 died so. With a 2 s wait, one run
# on a VM busy building hung instead: gloo's thread released its copy while the main thread,
# holding the GIL, was destroying the process group and waiting for that thread.)
# A weak reference to the pack hook enable() pushed. While _state is set the hooks are still
# pushed (enabled on another thread than the one exiting): nothing to wait for then.
_hooks_in_use = None


@atexit.register
def _release_hooks_at_exit() -> None:
    global _hooks_in_use
    if _state is not None and _state[3] == threading.get_ident():
        disable()
    deadline = time.monotonic() + 10.0
    while _state is None and _hooks_in_use is not None and _hooks_in_use() is not None:
        if time.monotonic() > deadline:
            break
        time.sleep(0.001)  # lets the thread holding the last copy take the GIL
    _hooks_in_use = None


def enabled() -> bool:
    return _state is not None


def segment(module: torch.nn.Module, name: Optional[str] = None) -> torch.nn.Module:
    """Makes ``module`` a segment (named ``name``, or after its class) whatever the rule picks;
    returns it."""
    make_segment(module, name or type(module).__name__)
    return module


def segments() -> list:
    """The qualified names of the modules made segments so far by the rule."""
    return list(_state[2].segments) if _state is not None else []


def stats() -> dict:
    """The allocator's statistics ("devices", by device number) and, once enabled, the
    activations' ("activations": tensors and bytes kept, offloaded and recomputed, steps, copies).
    ACTMEM_STATS=path writes the same at exit."""
    return json.loads(_C.stats_json())


def device() -> str:
    """The device whose memory actmem manages: "cuda" or "cpu"."""
    return _C.device()
