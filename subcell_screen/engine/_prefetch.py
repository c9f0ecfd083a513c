"""Overlap machinery of the local engine: an ordered, bounded prefetch on worker threads, and busy clocks.

:func:`prefetch` runs a function over a stream of items on worker threads a bounded window ahead of the
consumer and hands the results back in input order. The local engine runs each site's compute (segmentation
and embedding, the GPU work) on one such thread while this thread records the previous site and pulls the next
loaded one (loading and decoding run on the loader threads of :func:`subcell_screen.io.iter_sites`), so the
GPU is not idle while the store is written or the next site is read.

:class:`BusyClock` adds up the time spent inside chosen calls (the models' forward passes), per stage, so a run
can say what fraction of its wall time the models kept the device busy.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Failed", "prefetch", "BusyClock"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Failed(Generic[T]):
    """The result of an item whose call raised an isolated error (see :func:`prefetch`).

    Attributes
    ----------
    error : BaseException
        What the call raised.
    """

    error: BaseException


def prefetch(items: Iterable[T], fn: Callable[[T], R], *, depth: int = 2, workers: int = 1,
             isolate: tuple[type[BaseException], ...] = (Exception,),
             name: str = "subcell-prefetch") -> Iterator[tuple[T, R | Failed]]:
    """``(item, fn(item))`` in input order, computed on worker threads up to ``depth`` items ahead.

    Parameters
    ----------
    items
        Input stream. It is advanced lazily, in the consumer's thread (code that produces items, e.g. store
        reads, never runs on a worker).
    fn
        Called once per item on a worker thread.
    depth
        Items submitted and not yet handed to the consumer, at most (>= 1). Memory holds at most ``depth``
        results plus the one the consumer is working on.
    workers
        Worker threads (>= 1). With one, calls run one after the other, in input order.
    isolate
        Exception types that make a :class:`Failed` result for that item only (the others go on); any other
        exception is raised to the consumer at that item's position, after every earlier item was handed out.
    name
        Thread-name prefix.

    Yields
    ------
    item, result or Failed

    Raises
    ------
    Exception
        An error of ``fn`` not in ``isolate``, or of the input stream, once the items before it were handed out.

    Notes
    -----
    Closing the iterator early (``break``, an exception in the consumer, garbage collection) cancels the calls
    not yet started and waits for the running ones: no worker thread outlives the iterator.
    """
    from concurrent.futures import ThreadPoolExecutor

    if depth < 1 or workers < 1:
        raise ValueError(f"depth and workers must be >= 1, got depth={depth}, workers={workers}")
    it = iter(items)
    window: deque = deque()
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
    exhausted = False
    input_error: BaseException | None = None

    def fill() -> None:
        nonlocal exhausted, input_error
        while not exhausted and len(window) < depth:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                return
            except BaseException as exc:  # noqa: BLE001 - raised after the items before it are handed out
                exhausted, input_error = True, exc
                return
            window.append((item, executor.submit(fn, item)))

    try:
        fill()
        while window:
            item, fut = window.popleft()
            try:
                result: Any = fut.result()
            except isolate as exc:
                result = Failed(exc)
            fill()  # keep `depth` calls going while the consumer works on this one
            yield item, result
            del item, result  # release before waiting for the next result
        if input_error is not None:
            raise input_error
    finally:
        for _, fut in window:
            fut.cancel()
        window.clear()
        executor.shutdown(wait=True, cancel_futures=True)


class BusyClock:
    """Time spent inside chosen calls, per stage, from any thread.

    On a CUDA device the time of a call is measured by CUDA events recorded around it on the calling thread's
    current stream (the device time of the work the call enqueued, not the host time of launching it);
    elsewhere by the host clock. Calls of one stage must not overlap each other (the local engine makes them
    one at a time).

    Parameters
    ----------
    device
        Torch device (or its name) the timed calls run on.

    Examples
    --------
    >>> clock = BusyClock("cpu")
    >>> with clock.track("segment"):
    ...     pass
    >>> sorted(clock.seconds())
    ['segment']
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.cuda = str(device).startswith("cuda")
        self._lock = threading.Lock()
        self._host: dict[str, float] = {}
        self._calls: dict[str, int] = {}
        self._events: dict[str, deque] = {}  # stage -> (start, end) CUDA events not yet added up

    @contextlib.contextmanager
    def track(self, stage: str) -> Iterator[None]:
        """Count the time of the ``with`` body as busy time of ``stage``."""
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                with self._lock:
                    self._calls[stage] = self._calls.get(stage, 0) + 1
                    self._events.setdefault(stage, deque()).append((start, end))
                    self._settle(stage, block=False)
            return
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            with self._lock:
                self._calls[stage] = self._calls.get(stage, 0) + 1
                self._host[stage] = self._host.get(stage, 0.0) + dt

    def _settle(self, stage: str, *, block: bool) -> None:
        """Add up the finished event pairs of ``stage`` (all of them with ``block``); caller holds the lock."""
        q = self._events.get(stage)
        while q:
            start, end = q[0]
            if block:
                end.synchronize()
            elif not end.query():
                return
            self._host[stage] = self._host.get(stage, 0.0) + start.elapsed_time(end) / 1000.0
            q.popleft()

    @contextlib.contextmanager
    def timing(self, obj: Any, method: str, stage: str) -> Iterator[None]:
        """Inside the ``with`` block, count every call of ``obj.<method>`` as busy time of ``stage``.

        The method is shadowed by a timed wrapper on the instance and the instance is left as it was on exit
        (nothing is changed when ``obj`` is None).
        """
        if obj is None:
            yield
            return
        had_own = method in getattr(obj, "__dict__", {})
        own = obj.__dict__.get(method) if had_own else None
        inner = getattr(obj, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.track(stage):
                return inner(*args, **kwargs)

        setattr(obj, method, timed)
        try:
            yield
        finally:
            if had_own:
                setattr(obj, method, own)
            else:
                delattr(obj, method)

    def seconds(self) -> dict[str, float]:
        """Busy seconds per stage so far (waits for the device to finish the timed work)."""
        with self._lock:
            for stage in list(self._events):
                self._settle(stage, block=True)
            return dict(self._host)

    def calls(self) -> dict[str, int]:
        """Timed calls per stage so far."""
        with self._lock:
            return dict(self._calls)

    def lines(self, wall_seconds: float) -> list[str]:
        """One line per stage with its busy time and share of ``wall_seconds`` (none when nothing was timed)."""
        busy = self.seconds()
        calls = self.calls()
        where = "device time (CUDA events)" if self.cuda else "host time"
        out = []
        for stage, s in busy.items():
            share = s / wall_seconds if wall_seconds > 0 else float("nan")
            out.append(f"{stage} model forward passes: {s:.1f} s in {calls.get(stage, 0)} calls, {share:.0%} of "
                       f"the site loop's {wall_seconds:.1f} s wall time ({where})")
        if len(busy) > 1:
            total = sum(busy.values())
            share = total / wall_seconds if wall_seconds > 0 else float("nan")
            out.append(f"model forward passes together: {total:.1f} s, {share:.0%} of {wall_seconds:.1f} s")
        return out
