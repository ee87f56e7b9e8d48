"""Where and how a model computes: its torch device and its CPU threads, per runner.

``torch.set_num_threads`` sets the OpenMP team size of the *calling thread* (OpenMP's
``nthreads-var`` is per thread; ``torch.get_num_threads`` in threads that already use torch is
unchanged, a test checks it), so :func:`torch_threads` scopes it to one block of one thread and
restores it: each worker thread of the node runs its models with its own thread count. One
caveat: a thread whose *first* torch call happens while another thread is inside such a block
starts with that block's count (torch copies the last count set when a thread first uses it);
runners that set their threads explicitly (``queue.torch_threads``) are not affected. Torch is
imported when these are called, not when this module is.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def torch_device(name: str) -> Any:
    """``torch.device(name)``, or ValueError naming the device when torch does not know it or
    it is not available here (``cuda`` without a GPU)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:  # what torch raises for an unknown device string
        raise ValueError(f"unknown torch device {name!r}: {err}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"torch device {name!r}: no CUDA device is available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"torch device {name!r}: MPS is not available on this machine")
    return device


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads in this thread (``None``: as they are), then
    restore the previous count."""
    if threads is None:
        yield
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
