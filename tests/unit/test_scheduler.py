"""The worker's scheduler loop, driven through its loader seam (no llama.cpp needed)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from corral.api.errors import ServerBusyError
from corral.worker.scheduler import Loaded, Scheduler


@dataclass(frozen=True)
class Name:
    display: str


@dataclass
class Record:
    name: Name
    digest: str = "d"
    model_path: str = "/blob"


@dataclass
class Loads:
    started: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    delay: float = 0.0

    async def __call__(self, record, options) -> Loaded:
        self.started.append(record.name.display)
        await asyncio.sleep(self.delay)
        return Loaded(engine=None, size=1, context_length=8, close=lambda: self.closed.append(record.name.display))


def model(name: str) -> Record:
    return Record(Name(name))


def scheduler(loads: Loads, **kw) -> Scheduler:
    args = {"num_parallel": 1, "max_loaded": 3, "max_queue": 4, "default_keep_alive": 300.0} | kw
    return Scheduler(loader=loads, **args)


def run(coro):
    return asyncio.run(coro)


def test_one_load_serves_concurrent_requests():
    async def main():
        loads = Loads(delay=0.05)
        s = scheduler(loads, num_parallel=2)
        a, b = await asyncio.gather(s.acquire(model("m"), "opts", None), s.acquire(model("m"), "opts", None))
        assert loads.started == ["m"]
        assert a.runner is b.runner
        a.release()
        b.release()

    run(main())


def test_queue_bound_counts_requests_waiting_on_a_loaded_model():
    async def main():
        s = scheduler(Loads(), max_queue=1)
        held = await s.acquire(model("m"), "o", None)  # the only slot
        waiter = asyncio.create_task(s.acquire(model("m"), "o", None))
        await asyncio.sleep(0.01)
        with pytest.raises(ServerBusyError):
            await s.acquire(model("m"), "o", None)
        held.release()
        (await waiter).release()

    run(main())


def test_least_recently_used_idle_model_is_evicted():
    async def main():
        loads = Loads()
        s = scheduler(loads, max_loaded=2)
        for name in ("a", "b", "a", "c"):
            (await s.acquire(model(name), "o", None)).release()
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        assert loads.closed == ["b"]
        assert sorted(r.name for r in s.runners()) == ["a", "c"]

    run(main())


def test_busy_model_is_never_evicted():
    async def main():
        loads = Loads()
        s = scheduler(loads, max_loaded=1)
        busy = await s.acquire(model("a"), "o", None)
        other = asyncio.create_task(s.acquire(model("b"), "o", None))
        await asyncio.sleep(0.05)
        assert not other.done() and loads.closed == []
        busy.release()
        (await asyncio.wait_for(other, 5)).release()
        assert loads.closed == ["a"]

    run(main())


def test_changed_load_options_reload_the_model():
    async def main():
        loads = Loads()
        s = scheduler(loads)
        (await s.acquire(model("m"), "ctx=2048", None)).release()
        (await s.acquire(model("m"), "ctx=4096", None)).release()
        assert loads.started == ["m", "m"] and loads.closed == ["m"]

    run(main())


def test_keep_alive_zero_unloads_after_the_request_and_expiry_unloads_later():
    async def main():
        loads = Loads()
        s = scheduler(loads)
        (await s.acquire(model("now"), "o", 0)).release()
        (await s.acquire(model("soon"), "o", 0.05)).release()
        await asyncio.sleep(0.01)
        assert loads.closed == ["now"]
        await asyncio.sleep(0.1)
        assert loads.closed == ["now", "soon"]
        assert s.runners() == []

    run(main())
