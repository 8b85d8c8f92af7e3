"""connector.parallel: a task in a forked child, or inline where fork is unavailable."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import time
import weakref
from typing import Any

import numpy as np
import pytest

from connector.errors import MirrorError
from connector.parallel import can_fork, start_forked

needs_fork = pytest.mark.skipif(not can_fork(), reason="fork is not available here")


@needs_fork
def test_the_task_runs_in_another_process_and_its_result_comes_back() -> None:
    parent = os.getpid()
    task = start_forked(lambda: (os.getpid(), list(range(5))), "a test task")
    child, values = task.result()
    assert child != parent and values == [0, 1, 2, 3, 4]


@needs_fork
@pytest.mark.parametrize("read_early", [False, True])
def test_arrays_come_back_out_of_band_equal_and_writable(read_early: bool) -> None:
    def columns() -> dict[str, Any]:
        big = np.arange(300_000, dtype=np.int64)
        return {"big": big, "empty": np.zeros(0), "strided": big[::3], "flags": big % 2 == 0,
                "text": {7: "negative feedback"}}

    answer = start_forked(columns, "arrays", read_early=read_early).result()
    expected = columns()
    for name in ("big", "empty", "strided", "flags"):
        np.testing.assert_array_equal(answer[name], expected[name])
        assert answer[name].dtype == expected[name].dtype
        assert answer[name].flags.writeable  # the parent's code may update them in place
    answer["big"][0] = -1
    assert answer["text"] == {7: "negative feedback"}


@needs_fork
def test_the_child_sees_the_parents_memory_without_pickling() -> None:
    unpicklable = (lambda: 41, {"x": 1})  # a lambda cannot be pickled, yet the child has it
    assert start_forked(lambda: unpicklable[0]() + unpicklable[1]["x"], "t").result() == 42


@needs_fork
def test_an_exception_in_the_child_becomes_a_mirror_error_naming_the_task() -> None:
    def fail() -> None:
        raise ValueError("disk full")

    with pytest.raises(MirrorError, match="writing the ledger failed: ValueError: disk full"):
        start_forked(fail, "writing the ledger").result()


@needs_fork
def test_a_child_that_dies_without_answering_is_reported() -> None:
    with pytest.raises(MirrorError, match="exited with code 3"):
        start_forked(lambda: os._exit(3), "a dying task").result()


@needs_fork
def test_cancel_stops_a_child_still_running() -> None:
    task = start_forked(lambda: time.sleep(30), "a slow task")
    started = time.monotonic()
    task.cancel()
    task.cancel()  # idempotent
    assert time.monotonic() - started < 10


def test_without_fork_the_task_runs_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRM_RETENTION_NO_FORK", "1")
    assert not can_fork()
    task = start_forked(os.getpid, "inline")
    assert task.result() == os.getpid()

    def fail() -> None:
        raise ValueError("nope")

    with pytest.raises(MirrorError, match="inline failed: nope"):
        start_forked(fail, "inline").result()


def _exits_within(task: object, seconds: float) -> bool:
    process = task._process  # type: ignore[attr-defined]
    process.join(seconds)
    return process.exitcode is not None


@needs_fork
def test_an_answer_read_early_lets_the_child_exit_before_result_is_asked() -> None:
    answer = b"x" * 4_000_000  # far more than a pipe holds: the child blocks on sending
    late = start_forked(lambda: answer, "read when asked")
    early = start_forked(lambda: answer, "read early", read_early=True)
    assert _exits_within(early, 10.0), "the early-read child is gone"
    assert not _exits_within(late, 0.5), "the other still waits for its answer to be read"
    assert early.result() == answer and late.result() == answer


@needs_fork
def test_cancelling_an_early_read_task_stops_the_child_and_its_reader() -> None:
    task = start_forked(lambda: time.sleep(30), "a slow task", read_early=True)
    started = time.monotonic()
    task.cancel()
    assert time.monotonic() - started < 10.0
    with pytest.raises(MirrorError, match="a slow task failed"):
        task.result()


def test_a_large_array_travels_beside_the_pickle_not_inside_it() -> None:
    from connector.parallel import _pickled

    header, buffers = _pickled((True, {"big": np.arange(300_000, dtype=np.int64)}))
    assert len(header) < 1_000
    assert [len(buffer) for buffer in buffers] == [300_000 * 8]


def test_each_array_of_an_answer_is_freed_once_sent() -> None:
    from connector.parallel import _pickled, _receive_answer, _send_answer

    arrays = [np.arange(200_000, dtype=np.int64) + k for k in range(3)]
    alive = [weakref.ref(array) for array in arrays]
    header, buffers = _pickled((True, arrays))
    del arrays  # as in the child: the buffers hold the only references
    assert all(ref() is not None for ref in alive)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.append(_receive_answer(receiver)))
    reader.start()
    _send_answer(sender, header, buffers)
    reader.join()
    assert buffers == [] and all(ref() is None for ref in alive)
    ok, value = pickle.loads(received[0][0], buffers=received[0][1])
    assert ok and [int(a[0]) for a in value] == [0, 1, 2] and len(value[2]) == 200_000
