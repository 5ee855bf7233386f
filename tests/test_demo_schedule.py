"""The demo's task scheduler (tita_ext.demo.schedule): priorities, order, results and errors, inline
and on worker processes; and the demo's own task graph."""

from __future__ import annotations

import operator
import pathlib

import pytest

from tita_ext.demo.schedule import Task, critical_paths, order_of_start, run_tasks


def diamond() -> list[Task]:
    """a -> (b, c) -> d, with arithmetic on the results (stdlib functions: workers can unpickle them)."""
    return [Task("a", operator.add, lambda done: (2, 3), cost=1.0),
            Task("b", operator.mul, lambda done: (done["a"], 10), after=("a",), cost=5.0),
            Task("c", operator.neg, lambda done: (done["a"],), after=("a",), cost=1.0),
            Task("d", operator.sub, lambda done: (done["b"], done["c"]), after=("b", "c"), cost=2.0)]


def test_critical_paths_sum_the_costliest_chain_below_each_task():
    assert critical_paths(diamond()) == {"a": 8.0, "b": 7.0, "c": 3.0, "d": 2.0}


def test_order_of_start_takes_the_longest_ready_path_first():
    assert order_of_start(diamond()) == ["a", "b", "c", "d"]
    tasks = [Task("short", operator.pos, cost=1.0), Task("long", operator.pos, cost=4.0),
             Task("tail", operator.pos, after=("short",), cost=4.0)]
    # short + tail (5) outranks long (4); ties keep the given order
    assert order_of_start(tasks) == ["short", "long", "tail"]
    assert order_of_start([Task(k, operator.pos) for k in "xyz"]) == ["x", "y", "z"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_run_tasks_passes_results_downstream(jobs):
    assert run_tasks(diamond(), jobs) == {"a": 5, "b": 50, "c": -5, "d": 55}
    assert run_tasks([], jobs) == {}  # nothing to run: no pool is started


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_task_raises_its_own_error(jobs):
    tasks = [Task("ok", operator.add, lambda done: (1, 1)),
             Task("bad", operator.truediv, lambda done: (1, 0), after=("ok",)),
             Task("never", operator.neg, lambda done: (done["bad"],), after=("bad",))]
    with pytest.raises(ZeroDivisionError):
        run_tasks(tasks, jobs)


def test_bad_graphs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="waits on 'missing', which is not in the graph"):
        critical_paths([Task("a", operator.pos, after=("missing",))])
    with pytest.raises(ValueError, match="cycle: 'a' -> 'b' -> 'a'"):
        critical_paths([Task("a", operator.pos, after=("b",)), Task("b", operator.pos, after=("a",))])
    with pytest.raises(ValueError, match="two tasks share a key"):
        run_tasks([Task("a", operator.pos), Task("a", operator.neg)], 1)
    with pytest.raises(ValueError, match="jobs must be at least 1, got 0"):
        run_tasks(diamond(), 0)


def test_the_demo_starts_every_base_first_and_waits_for_both_models():
    pytest.importorskip("transformers")
    from tita_ext.demo import DemoRecipe
    from tita_ext.demo.story import seed_tasks

    recipe = DemoRecipe(seeds=(0, 1, 2))
    tasks = seed_tasks(recipe, pathlib.Path("out"), None)
    order = order_of_start(tasks)
    assert order[:3] == [("base", 0), ("base", 1), ("base", 2)]  # the longest chains start first
    by_key = {t.key: t for t in tasks}
    for seed in recipe.seeds:
        assert by_key[("pope", seed)].after == (("base", seed), ("reward", seed))
        assert by_key[("reward", seed)].after == ()  # labelled pairs: the reward model does not wait for the base
        assert order.index(("reward", seed)) < order.index(("pope", seed))
    unlabelled = {t.key: t for t in seed_tasks(DemoRecipe(seeds=(0,), pair_source="noise"), pathlib.Path("o"), None)}
    assert unlabelled[("reward", 0)].after == (("base", 0),)  # its pairs are the base's answers
    done = {("base", 0): {"folders": {"base": "/b"}}}
    assert unlabelled[("reward", 0)].arguments(done)[-1] == "/b"
