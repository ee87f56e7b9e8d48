"""Where and how a model computes: torch devices by name, CPU threads scoped to one block of one thread."""
from __future__ import annotations

import threading

import pytest
import torch

from neuroread.models.runtime import torch_device, torch_threads


def test_torch_device_names_what_it_cannot_use():
    assert torch_device("cpu") == torch.device("cpu")
    for name in ("gpu0", "cpu:x", ""):
        with pytest.raises(ValueError, match=f"unknown torch device {name!r}"):
            torch_device(name)
    if torch.cuda.is_available():
        assert torch_device("cuda:0").type == "cuda"
    else:
        with pytest.raises(ValueError, match="torch device 'cuda:0': no CUDA device is available on this machine"):
            torch_device("cuda:0")
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="torch device 'mps': MPS is not available on this machine"):
            torch_device("mps")


def test_torch_threads_sets_the_count_for_the_block_and_restores_it():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="inside"), torch_threads(1):
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before  # restored when the block fails too
    with torch_threads(None):
        assert torch.get_num_threads() == before
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ValueError, match=r"threads must be an integer >= 1, got"), torch_threads(bad):
            pass
    assert torch.get_num_threads() == before


def test_each_thread_keeps_its_own_count():
    """A worker that has run torch keeps its count while another thread runs a block with a count of its own."""
    main = torch.get_num_threads()
    seen: dict[str, int] = {}
    ready, main_inside, worker_checked, worker_inside, main_checked = (threading.Event() for _ in range(5))

    def worker() -> None:
        seen["start"] = torch.get_num_threads()
        ready.set()
        main_inside.wait(10)
        seen["while main is in its block"] = torch.get_num_threads()
        worker_checked.set()
        with torch_threads(main + 1):
            seen["own block"] = torch.get_num_threads()
            worker_inside.set()
            main_checked.wait(10)
        seen["after"] = torch.get_num_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert ready.wait(10)
        with torch_threads(1):
            main_inside.set()
            assert worker_checked.wait(10)
            assert torch.get_num_threads() == 1
        assert worker_inside.wait(10)
        assert torch.get_num_threads() == main  # the worker's block leaves this thread alone
        main_checked.set()
    finally:
        main_inside.set()
        main_checked.set()
        thread.join(10)
    assert seen == {"start": main, "while main is in its block": main, "own block": main + 1, "after": main}
