"""The local engine's overlap machinery: ordered, bounded prefetch on worker threads, and busy clocks."""

from __future__ import annotations

import gc
import threading
import time

import pytest

from subcell_screen.engine._prefetch import BusyClock, Failed, prefetch


def _threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def _wait_gone(prefix: str, timeout: float = 5.0) -> list[threading.Thread]:
    end = time.monotonic() + timeout
    while _threads(prefix) and time.monotonic() < end:
        time.sleep(0.01)
    return _threads(prefix)


def test_results_come_in_input_order_whatever_order_they_finish():
    # later items finish first: with 4 workers, item i sleeps (10 - i) ms
    out = list(prefetch(range(10), lambda i: (time.sleep((10 - i) / 1000), i * i)[1], depth=4, workers=4,
                        name="t-order"))
    assert [item for item, _ in out] == list(range(10))
    assert [res for _, res in out] == [i * i for i in range(10)]
    assert _wait_gone("t-order") == []


def test_calls_run_ahead_of_the_consumer_on_another_thread():
    started = threading.Event()
    seen: list[str] = []

    def fn(i):
        seen.append(threading.current_thread().name)
        if i == 1:
            started.set()
        return i

    it = prefetch(range(3), fn, depth=2, name="t-ahead")
    assert next(it) == (0, 0)
    # while the consumer holds item 0, item 1 is computed without being asked for
    assert started.wait(5.0)
    assert list(it) == [(1, 1), (2, 2)]
    assert all(name.startswith("t-ahead") for name in seen)


def test_never_more_than_depth_items_ahead_of_the_consumer():
    pulled = 0
    in_flight = 0
    max_in_flight = 0
    lock = threading.Lock()

    def items():
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield i

    def fn(i):
        nonlocal in_flight, max_in_flight
        with lock:
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
        time.sleep(0.001)
        with lock:
            in_flight -= 1
        return i

    consumed = 0
    for _item, _ in prefetch(items(), fn, depth=3, workers=3, name="t-bound"):
        consumed += 1
        # items pulled from the input but not yet handed out: the window (3) plus the one just handed out
        assert pulled - consumed <= 3, (pulled, consumed)
        time.sleep(0.002)  # a slow consumer: the workers must wait, not run further ahead
    assert consumed == 50 and max_in_flight <= 3


def test_a_failing_item_is_its_own_failure_and_the_rest_go_on():
    def fn(i):
        if i in (2, 5):
            raise ValueError(f"bad site {i}")
        return i

    out = list(prefetch(range(8), fn, depth=3, workers=2, name="t-isolate"))
    assert [i for i, _ in out] == list(range(8))
    failed = {i: r.error for i, r in out if isinstance(r, Failed)}
    assert set(failed) == {2, 5} and str(failed[5]) == "bad site 5" and isinstance(failed[2], ValueError)
    assert [r for i, r in out if i not in failed] == [0, 1, 3, 4, 6, 7]


def test_an_error_not_isolated_stops_at_its_item_after_the_earlier_ones():
    class Fatal(Exception):
        pass

    def fn(i):
        if i == 3:
            raise Fatal("stop the run")
        return i

    got = []
    with pytest.raises(Fatal, match="stop the run"):
        for item, res in prefetch(range(10), fn, depth=4, workers=2, isolate=(ValueError,), name="t-fatal"):
            got.append((item, res))
    assert got == [(0, 0), (1, 1), (2, 2)]
    assert _wait_gone("t-fatal") == []


def test_an_error_of_the_input_comes_after_the_items_before_it():
    def items():
        yield from range(3)
        raise OSError("store unreadable")

    got = []
    with pytest.raises(OSError, match="store unreadable"):
        for item, _res in prefetch(items(), lambda i: i, depth=5, name="t-input"):
            got.append(item)
    assert got == [0, 1, 2]


def test_stopping_early_leaves_no_thread_and_starts_nothing_more():
    calls = []

    def fn(i):
        calls.append(i)
        time.sleep(0.01)
        return i

    it = prefetch(range(1000), fn, depth=4, workers=2, name="t-early")
    for item, _ in it:
        if item == 5:
            break
    it.close()
    assert _wait_gone("t-early") == []
    n = len(calls)
    time.sleep(0.05)
    assert len(calls) == n and n <= 5 + 1 + 4  # handed out, the one held, at most the window


def test_an_abandoned_iterator_is_cleaned_up_by_garbage_collection():
    it = prefetch(range(100), lambda i: i, depth=3, name="t-gc")
    next(it)
    del it
    gc.collect()
    assert _wait_gone("t-gc") == []


def test_consumer_exception_leaves_no_thread():
    with pytest.raises(RuntimeError):
        for item, _ in prefetch(range(100), lambda i: time.sleep(0.002) or i, depth=2, workers=2,
                                name="t-consumer"):
            if item == 2:
                raise RuntimeError("writer failed")
    assert _wait_gone("t-consumer") == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth and workers"):
        next(prefetch([1], lambda i: i, depth=0))
    assert list(prefetch([], lambda i: i)) == []


def test_busy_clock_counts_the_time_inside_a_wrapped_method_and_restores_it():
    class Model:
        def forward(self, x):
            time.sleep(0.02)
            return x + 1

    m = Model()
    clock = BusyClock("cpu")
    with clock.timing(m, "forward", "embed"):
        assert m.forward(1) == 2 and m.forward(2) == 3
    assert "forward" not in m.__dict__ and m.forward(3) == 4  # the instance is as it was
    busy = clock.seconds()
    assert clock.calls() == {"embed": 2}
    assert 0.04 <= busy["embed"] < 1.0
    [line] = clock.lines(0.08)
    assert line.startswith("embed model forward passes: 0.0 s in 2 calls,") and "host time" in line
    # nested wrappers (two clocks on one model) both count and unwind in order
    a, b = BusyClock(), BusyClock()
    with a.timing(m, "forward", "s"), b.timing(m, "forward", "s"):
        m.forward(0)
    assert a.calls() == b.calls() == {"s": 1} and "forward" not in m.__dict__
    with clock.timing(None, "forward", "segment"):  # no model: nothing to time
        pass
    assert clock.calls() == {"embed": 2}


def test_busy_clock_on_a_torch_module_called_through_call():
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(4, 2)
    clock = BusyClock("cpu")
    x = torch.ones(3, 4)
    want = net(x)
    with clock.timing(net, "forward", "segment"):
        got = net(x)
    assert torch.equal(got, want) and clock.calls() == {"segment": 1}
    assert "forward" not in net.__dict__
    assert torch.equal(net(x), want)


def test_busy_clock_lines_share_of_wall():
    clock = BusyClock()
    with clock.track("segment"):
        time.sleep(0.03)
    with clock.track("embed"):
        time.sleep(0.01)
    lines = clock.lines(0.1)
    assert len(lines) == 3 and lines[-1].startswith("model forward passes together: 0.0 s,")
    share = float(lines[-1].split(", ")[1].split("%")[0])
    assert 35 <= share <= 100  # 0.04 s busy of 0.1 s, give or take a loaded machine
    assert BusyClock().lines(1.0) == []
