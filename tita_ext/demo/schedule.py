"""Run a small graph of tasks on `jobs` worker processes, longest remaining path first.

The demo's seeds are not equal units of work: each is a long task (the base), a shorter one (the
reward model), and an evaluation that needs both. Running whole seeds `jobs` at a time leaves
cores idle while the last seed runs alone; scheduling the tasks themselves keeps every core busy
until the graph's critical path allows no more (list scheduling by remaining path length).

Results never depend on the schedule: every task is deterministic given its inputs and runs on one
torch thread (the caller's functions see to that); only wall time does.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable


@dataclass(frozen=True)
class Task:
    """One unit of work: `function(*arguments(results))` in a worker, after every task in `after`.

    function: a module-level function (worker processes get it by pickling).
    arguments: runs in the parent with {key: result} of the tasks in `after`; returns the call's
        positional arguments (picklable).
    cost: an estimate in any unit shared by the graph; only the order of the path sums matters."""

    key: Hashable
    function: Callable[..., Any]
    arguments: Callable[[dict[Hashable, Any]], tuple] = field(default=lambda done: ())
    after: tuple[Hashable, ...] = ()
    cost: float = 1.0


def critical_paths(tasks: list[Task]) -> dict[Hashable, float]:
    """Per task, its cost plus the costliest chain of tasks that wait on it (its priority)."""
    by_key = {task.key: task for task in tasks}
    waiting: dict[Hashable, list[Hashable]] = {key: [] for key in by_key}
    for task in tasks:
        for before in task.after:
            if before not in by_key:
                raise ValueError(f"task {task.key!r} waits on {before!r}, which is not in the graph")
            waiting[before].append(task.key)
    paths: dict[Hashable, float] = {}

    def path(key: Hashable, stack: tuple = ()) -> float:
        if key in stack:
            raise ValueError(f"the tasks wait on each other in a cycle: {' -> '.join(map(repr, stack + (key,)))}")
        if key not in paths:
            paths[key] = by_key[key].cost + max((path(k, stack + (key,)) for k in waiting[key]), default=0.0)
        return paths[key]

    for key in by_key:
        path(key)
    return paths


def _priority(tasks: list[Task]) -> Callable[[Task], tuple[float, int]]:
    """The sort key of ready tasks: the longest path first, ties in the order given."""
    paths = critical_paths(tasks)
    rank = {task.key: i for i, task in enumerate(tasks)}
    return lambda task: (-paths[task.key], rank[task.key])


def order_of_start(tasks: list[Task]) -> list[Hashable]:
    """The order one worker runs the tasks in: the ready task with the longest path first (ties:
    the order given). Also the order `run_tasks` hands tasks out to workers as they free up."""
    priority = _priority(tasks)
    done: set[Hashable] = set()
    order: list[Hashable] = []
    while len(order) < len(tasks):
        task = min((t for t in tasks if t.key not in done and all(b in done for b in t.after)), key=priority)
        order.append(task.key)
        done.add(task.key)
    return order


def run_tasks(tasks: list[Task], jobs: int) -> dict[Hashable, Any]:
    """Run the graph: inline when jobs is 1, else on `jobs` spawned worker processes that take the
    ready task with the longest remaining path whenever one frees up. Returns {key: result}.

    The first task to raise stops the run (the others are terminated) and its error is raised here.
    The pool is left (and its workers terminated) on any exit, Ctrl-C included."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if len({task.key for task in tasks}) != len(tasks):
        raise ValueError("two tasks share a key")
    priority = _priority(tasks)  # also refuses a graph with a missing task or a cycle
    results: dict[Hashable, Any] = {}
    if jobs == 1 or not tasks:
        by_key = {task.key: task for task in tasks}
        for key in order_of_start(tasks):
            task = by_key[key]
            results[key] = task.function(*task.arguments(results))
        return results

    import multiprocessing

    finished: queue.Queue = queue.Queue()
    pending = list(tasks)
    running = 0
    # a Pool (not a ProcessPoolExecutor): leaving the block, also on Ctrl-C, terminates the workers
    with multiprocessing.get_context("spawn").Pool(min(jobs, len(tasks))) as pool:
        while pending or running:
            ready = sorted((t for t in pending if all(b in results for b in t.after)), key=priority)
            for task in ready[:max(0, jobs - running)]:
                pending.remove(task)
                running += 1
                pool.apply_async(task.function, task.arguments(results),
                                 callback=lambda result, key=task.key: finished.put((key, result, None)),
                                 error_callback=lambda error, key=task.key: finished.put((key, None, error)))
            key, result, error = _next(finished)
            running -= 1
            if error is not None:
                raise error
            results[key] = result
    return results


def _next(finished: queue.Queue) -> tuple:
    """The next finished task, waiting in short slices so that Ctrl-C is seen at once."""
    while True:
        try:
            return finished.get(timeout=0.5)
        except queue.Empty:
            continue
