"""Several threads at once: a shared GuidedGenerator (static caches), guided_generate's cached
generator (the CUDA route, with the capture faked on the CPU), guided_generate's eager loop and
the fused op each give exactly the tokens of the same calls made one after another."""

from __future__ import annotations

import threading

import pytest
import torch
from generate_fixtures import FakeCapture, assert_same_output, pair

import tita_ext

THREADS, CALLS = 4, 3


def run_threads(work, jobs: list) -> list:
    """work(job) for every job, THREADS threads each taking every THREADS-th job, started together."""
    results: list = [None] * len(jobs)
    errors: list = []
    start = threading.Barrier(THREADS)

    def worker(first: int) -> None:
        start.wait()
        try:
            for index in range(first, len(jobs), THREADS):
                results[index] = work(jobs[index])
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def decode_jobs() -> list[dict]:
    """THREADS x CALLS calls that differ in rows, seeds and lengths (so a mixed-up state shows)."""
    rows = ((0, 1, 2), (1,), (2, 0), (0,))
    sampling = dict(do_sample=True, temperature=0.9, top_k=30)
    return [dict(rows=rows[j % len(rows)], seed=100 + j, max_new_tokens=4 + j % 5, **(sampling if j % 2 else {}))
            for j in range(THREADS * CALLS)]


def call_with(p, decode):
    def work(job):
        job = dict(job)
        inputs = p.inputs(job.pop("rows"))
        return decode(inputs, eos_token_id=[], **job)
    return work


def test_a_shared_generator_serialises_its_calls():
    p = pair("llava")
    # A short max_length as in the reported IndexError: interleaved calls overran the positions.
    gen = tita_ext.GuidedGenerator(p.base, p.reward, max_batch_size=4, max_length=40, sync_every=2)
    work = call_with(p, gen.generate)
    jobs = decode_jobs()
    sequential = [work(job) for job in jobs]
    for got, want in zip(run_threads(work, jobs), sequential):
        assert_same_output(got, want)
    assert gen.calls == 2 * len(jobs)


def test_guided_generate_cached_generator_under_threads(monkeypatch):
    """The CUDA route of guided_generate: one cached generator shared by every caller; batches of
    several sizes make threads replace the cached generator while others still decode on it."""
    FakeCapture(monkeypatch)
    tita_ext.clear_generator_cache()
    p = pair("llama")
    try:
        work = call_with(p, lambda inputs, **kw: tita_ext.guided_generate(p.base, p.reward, inputs, **kw))
        jobs = decode_jobs()
        threaded = run_threads(work, jobs)
        tita_ext.clear_generator_cache()
        for got, job in zip(threaded, jobs):
            job = dict(job)
            want = tita_ext.guided_generate(p.base, p.reward, p.inputs(job.pop("rows")), eos_token_id=[],
                                            use_cuda_graph=False, **job)
            assert_same_output(got, want)
    finally:
        tita_ext.clear_generator_cache()


def test_guided_generate_eager_loop_is_thread_safe():
    p = pair("qwen2_vl")
    work = call_with(p, lambda inputs, **kw: tita_ext.guided_generate(p.base, p.reward, inputs,
                                                                       use_cuda_graph=False, **kw))
    jobs = decode_jobs()
    sequential = [work(job) for job in jobs]
    for got, want in zip(run_threads(work, jobs), sequential):
        assert_same_output(got, want)


@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_the_op_is_thread_safe(backend):
    if backend == "compiled" and not tita_ext.compiled_available("cpu"):
        pytest.skip("compiled module not built")
    g = torch.Generator().manual_seed(0)
    jobs = [(torch.randn(8, 1000, generator=g), torch.randn(8, 900, generator=g), seed) for seed in range(24)]

    def work(job):
        base, reward, seed = job
        return tita_ext.guided_sample(base, reward, alpha=0.6, temperature=0.8, top_k=50, top_p=0.9, seed=seed,
                                      backend=backend)

    sequential = [work(job) for job in jobs]
    for got, want in zip(run_threads(work, jobs), sequential):
        assert torch.equal(got.tokens, want.tokens) and torch.equal(got.logprob, want.logprob)
