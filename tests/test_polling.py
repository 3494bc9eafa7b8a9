"""The polling selector: what the daemon's loop and the workers' loops wait with."""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
from collections.abc import Iterator

import pytest

from nodehost.executors.polling import PollingSelector, run_options


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_an_event_that_comes_while_it_looks_is_returned_without_sleeping(
        pipe: tuple[int, int]) -> None:
    r, w = pipe
    sel = PollingSelector(budget=5.0)
    sel.register(r, selectors.EVENT_READ)
    writer = threading.Timer(0.01, os.write, (w, b"x"))
    writer.start()
    events = sel.select(timeout=10.0)
    writer.join()
    assert [key.fd for key, _ in events] == [r]
    sel.close()


def test_the_timeout_holds_while_it_looks(pipe: tuple[int, int]) -> None:
    r, _w = pipe
    sel = PollingSelector(budget=60.0)
    sel.register(r, selectors.EVENT_READ)
    assert sel.select(timeout=0.02) == []  # would spin a minute if the budget won
    sel.close()


def test_an_idle_selector_stops_looking_until_the_next_event(pipe: tuple[int, int],
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              ) -> None:
    r, w = pipe
    sel = PollingSelector(budget=0.01)
    sel.register(r, selectors.EVENT_READ)
    looks: list[float | None] = []
    real = selectors.DefaultSelector.select

    def spy(self: selectors.BaseSelector, timeout: float | None = None) -> object:
        looks.append(timeout)
        return real(self, timeout)  # type: ignore[arg-type]

    monkeypatch.setattr(selectors.DefaultSelector, "select", spy)
    assert sel.select(timeout=0.03) == []  # looks for its budget, then waits the rest
    polled = [t for t in looks if t == 0]
    assert len(polled) > 1 and looks[-1] is not None and looks[-1] > 0
    looks.clear()
    assert sel.select(timeout=0.01) == []  # nothing came: it sleeps at once now
    assert looks == [0.01]
    os.write(w, b"x")
    looks.clear()
    assert sel.select(timeout=1.0)  # an event: hot again
    os.read(r, 1)
    looks.clear()
    sel.select(timeout=0.02)
    assert looks.count(0) > 1
    sel.close()


def test_a_budget_of_zero_is_asyncios_own_loop() -> None:
    assert run_options(0) == {}
    factory = run_options(300)["loop_factory"]
    loop = factory()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert isinstance(loop._selector, PollingSelector)  # type: ignore[attr-defined]
        assert loop.run_until_complete(asyncio.sleep(0.001, "slept")) == "slept"
    finally:
        loop.close()
