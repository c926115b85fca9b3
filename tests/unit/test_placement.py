"""Where the router loads a model: memory fit, model-count limits, true LRU, the in-flight guard."""

from corral.cluster.workers import STATE_DRAINING, WorkerInfo
from corral.router.placement import plan_load
from corral.router.state import Placement

GB = 1 << 30


def worker(wid: str, memory: int = 8 * GB, max_loaded: int = 3, state: str = "ready") -> WorkerInfo:
    return WorkerInfo(id=wid, url=f"http://{wid}", memory_total=memory, max_loaded=max_loaded, state=state)


def placed(wid: str, model: str, size: int, *, used: int, busy: int = 0) -> Placement:
    return Placement(worker=wid, model=model, size=size, since=0, expires_at=-1, in_flight=busy, last_used=used)


def test_the_worker_with_most_free_memory_takes_a_new_model():
    workers = [worker("a"), worker("b")]
    plan = plan_load("m", 2 * GB, workers, [placed("a", "x", 4 * GB, used=1)])
    assert plan.worker.id == "b" and plan.evict == []


def test_draining_excluded_and_holding_workers_are_not_chosen():
    workers = [worker("a", state=STATE_DRAINING), worker("b"), worker("c")]
    placements = [placed("b", "m", GB, used=1)]
    assert plan_load("m", GB, workers, placements).worker.id == "c"
    assert plan_load("m", GB, workers, placements, exclude={"c"}) is None


def test_when_nothing_fits_the_least_recently_used_idle_model_goes():
    workers = [worker("a", memory=4 * GB), worker("b", memory=4 * GB)]
    placements = [
        placed("a", "old", 3 * GB, used=10),
        placed("b", "older", 3 * GB, used=5),
        placed("b", "small", GB // 2, used=50),
    ]
    plan = plan_load("new", 2 * GB, workers, placements)
    assert plan.worker.id == "b" and [p.model for p in plan.evict] == ["older"]


def test_a_busy_model_is_never_evicted():
    workers = [worker("a", memory=4 * GB)]
    placements = [placed("a", "busy", 3 * GB, used=1, busy=1)]
    assert plan_load("new", 2 * GB, workers, placements) is None
    placements = [placed("a", "busy", 2 * GB, used=1, busy=1), placed("a", "idle", GB, used=9)]
    plan = plan_load("new", 2 * GB, workers, placements)
    assert [p.model for p in plan.evict] == ["idle"]


def test_max_loaded_models_counts_too():
    workers = [worker("a", max_loaded=1)]
    plan = plan_load("new", GB, workers, [placed("a", "one", GB, used=3)])
    assert [p.model for p in plan.evict] == ["one"]


def test_several_evictions_when_one_is_not_enough():
    workers = [worker("a", memory=4 * GB)]
    placements = [placed("a", "p", GB, used=1), placed("a", "q", GB, used=2), placed("a", "r", GB, used=3)]
    plan = plan_load("big", 3 * GB, workers, placements)
    assert [p.model for p in plan.evict] == ["p", "q"]


def test_a_model_bigger_than_any_worker_has_no_plan():
    assert plan_load("huge", 16 * GB, [worker("a")], []) is None
