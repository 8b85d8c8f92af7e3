"""Run a piece of mirror I/O in a forked child process, beside the parent's own work.

Reading and writing SQLite rows from Python is bound by the GIL: threads take turns, so
the rules' recompute could only ever use one of the machine's cores for it.  A forked
child gets the parent's memory copy-on-write — the computed columns need no pickling —
opens its *own* SQLite connection and works in parallel; only its (small) result comes
back through a pipe.

Where ``fork`` is not available (Windows, or ``CRM_RETENTION_NO_FORK=1`` is set) the
task runs inline instead, so callers behave the same everywhere, only slower.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import traceback
from collections.abc import Callable
from typing import Generic, TypeVar

from connector.errors import MirrorError
from connector.heap import return_freed_memory

__all__ = ["Forked", "can_fork", "start_forked"]

T = TypeVar("T")
_DISABLE_ENV = "CRM_RETENTION_NO_FORK"
_TRIM_BYTES = 32 << 20  # freed between two trims: a trim costs a walk of the heap


def can_fork() -> bool:
    """True when tasks really run in a forked child (POSIX, not disabled by the env)."""
    return (os.environ.get(_DISABLE_ENV, "") not in ("1", "true", "yes")
            and "fork" in multiprocessing.get_all_start_methods())


class Forked(Generic[T]):
    """A task running in a child process (or already run inline); ``result()`` waits."""

    def __init__(self, task: Callable[[], T], what: str, read_early: bool = False) -> None:
        self.what = what
        self._inline: tuple[bool, T | BaseException] | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        if not can_fork():
            self._inline = _run_inline(task)
            return
        context = multiprocessing.get_context("fork")
        receiver, sender = context.Pipe(duplex=False)
        self._receiver = receiver
        self._process = context.Process(target=_child_main, args=(task, sender), daemon=True)
        # dead heap pages shared with the child would be copied as the parent reuses them
        return_freed_memory()
        self._process.start()
        sender.close()  # only the child writes: EOF tells us it died without answering
        self._payload: tuple[bytes, list[bytearray]] | None = None
        self._reader: threading.Thread | None = None
        if read_early:
            self._reader = threading.Thread(target=self._read_answer, daemon=True,
                                            name=f"answer of {what}")
            self._reader.start()

    def result(self) -> T:
        """The task's return value; its exception (as :class:`MirrorError`) if it failed."""
        ok, value = self._inline if self._inline is not None else self._receive()
        if not ok:
            if isinstance(value, MirrorError):
                raise value
            raise MirrorError(f"{self.what} failed: {value}") from None
        return value  # type: ignore[return-value]

    def cancel(self) -> None:
        """Stop the child if it still runs (the caller gave up on it); idempotent."""
        process = self._process
        if process is not None and process.exitcode is None:
            process.terminate()
            process.join()
        if self._reader is not None:
            self._reader.join()  # the terminated child's pipe gives EOF
        elif process is not None and not self._receiver.closed:
            self._receiver.close()

    def _read_answer(self) -> None:
        # os.read releases the interpreter lock: this thread waits without slowing the
        # parent, and does nothing else (it takes no lock a later fork could inherit)
        try:
            self._payload = _receive_answer(self._receiver)
        except (EOFError, OSError, multiprocessing.BufferTooShort):
            self._payload = None
        finally:
            self._receiver.close()

    def _receive(self) -> tuple[bool, T | BaseException]:
        assert self._process is not None
        if self._reader is None:  # not read early: read it now
            self._read_answer()
        else:
            self._reader.join()
        self._process.join()
        payload, self._payload = self._payload, None
        if payload is None:
            code = self._process.exitcode
            return False, RuntimeError(f"the child process exited with code {code}")
        header, buffers = payload
        ok, value = pickle.loads(header, buffers=buffers)
        return ok, value


def start_forked(task: Callable[[], T], what: str, read_early: bool = False) -> Forked[T]:
    """Start ``task`` in a forked child now; ``what`` names it in error messages.

    With ``read_early`` a thread reads the answer the moment the child sends it, so the
    child exits (and frees its memory) without waiting for ``result()``: worth it for a
    child that finishes long before its result is wanted.  The answer's bytes then wait
    in the parent instead — for a big answer received while the parent allocates (the
    deal scan's), that fragments the parent's heap, so it is off by default.
    """
    return Forked(task, what, read_early)


def _run_inline(task: Callable[[], T]) -> tuple[bool, T | BaseException]:
    try:
        return True, task()
    except Exception as exc:  # reported by result(), as the child's would be
        return False, exc


def _child_main(task: Callable[[], object], sender: multiprocessing.connection.Connection
                ) -> None:
    # The child must never run the parent's cleanup (atexit handlers, SQLite connections
    # it inherited, buffered files): it leaves with os._exit whatever happens.
    code = 0
    try:
        try:
            header, buffers = _pickled((True, task()))
        except Exception as exc:
            code = 1
            text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            error: BaseException = exc if isinstance(exc, MirrorError) else RuntimeError(text)
            header, buffers = _pickled((False, error))
        # the answer itself is gone: its arrays live on only in ``buffers``, and each is
        # freed once sent
        _send_answer(sender, header, buffers)
        sender.close()
    finally:
        os._exit(code)


def _pickled(answer: object) -> tuple[bytes, list[memoryview]]:
    """``answer`` pickled, its large contiguous arrays left out of band, uncopied.

    An answer of a dozen million-row columns is ~200 MB: pickled in band it existed
    twice in the child (arrays and bytes) and twice in the parent (bytes and arrays)
    just when the parent's ledger build peaks.
    """
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps(answer, protocol=5, buffer_callback=buffers.append)
    return header, [buffer.raw() for buffer in buffers]


def _send_answer(sender: multiprocessing.connection.Connection, header: bytes,
                 buffers: list[memoryview]) -> None:
    """The header and each buffer's size as one message, then each buffer as one.

    ``buffers`` is emptied on the way: each buffer is released once sent, and the
    memory it held handed back to the system (:mod:`connector.heap`), so the
    answer does not exist whole in both processes at once while the parent receives it
    (at a million customers, ~180 MB at the recompute's memory peak).
    """
    sender.send_bytes(pickle.dumps((header, [len(buffer) for buffer in buffers])))
    freed = 0
    while buffers:
        buffer = buffers.pop(0)
        sender.send_bytes(buffer)
        freed += len(buffer)
        buffer.release()
        del buffer
        if freed >= _TRIM_BYTES or not buffers:
            return_freed_memory()
            freed = 0


def _receive_answer(receiver: multiprocessing.connection.Connection
                    ) -> tuple[bytes, list[bytearray]]:
    """What ``_send_answer`` sent: each buffer read straight into its own bytearray, so
    the arrays unpickled on it are writable and never copied.  Each bytearray is made
    only when its buffer comes, as the child frees the one it sent."""
    header, sizes = pickle.loads(receiver.recv_bytes())
    buffers = []
    for size in sizes:
        buffer = bytearray(size)
        if receiver.recv_bytes_into(buffer) != size:
            raise EOFError("a short buffer in the child's answer")
        buffers.append(buffer)
    return header, buffers
