"""GuidedGenerator's CUDA graphs on a GPU: the captured decode step gives the eager step's tokens
(greedy and seeded sampling, every family, float32 and bfloat16, with and without the two-stream
overlap), buckets share one memory pool and are captured once, a replay never syncs with the
host, sync_every keeps the output exact, and guided_generate uses the cached graphed generator.
Skipped without CUDA (the CPU side is tested in test_guided_generator.py)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from generate_fixtures import FAMILIES, Pair, pair

import tita_ext
from tita_ext import generator as gen_module
from tita_ext import tiny_models as tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NEW = 12
MODES = {
    "greedy": dict(),
    "one_seed": dict(do_sample=True, temperature=0.9, top_k=40, seed=5),
    "row_seeds": dict(do_sample=True, temperature=1.1, top_p=0.9, min_p=0.01, seed=[11, 12, 13]),
}


@functools.lru_cache(maxsize=None)
def cuda_pair(family: str, dtype: torch.dtype = torch.float32) -> Pair:
    """The tests' tiny pair, copied to the GPU; inputs moved there too."""
    p = pair(family)
    base = copy.deepcopy(p.base).to("cuda", dtype)
    reward = copy.deepcopy(p.reward).to("cuda", dtype)

    def make_inputs(prompts, colors):
        made = p.make_inputs(prompts, colors)
        return {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in made.items()}

    return Pair(family, base, reward, make_inputs)


def generator(p: Pair, **kwargs) -> tita_ext.GuidedGenerator:
    kwargs.setdefault("max_batch_size", 4)
    kwargs.setdefault("max_length", 96)
    return tita_ext.GuidedGenerator(p.base, p.reward, **kwargs)


def assert_same(got: tita_ext.GuidedOutput, want: tita_ext.GuidedOutput, atol: float = 0.0) -> None:
    assert torch.equal(got.new_tokens, want.new_tokens)
    assert torch.equal(got.lengths, want.lengths) and got.finish_reason == want.finish_reason
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=atol, rtol=0)
    torch.testing.assert_close(got.token_rewards, want.token_rewards, atol=atol, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", list(MODES))
def test_graphed_step_equals_eager_step(family, mode, dtype):
    p = cuda_pair(family, dtype)
    graphed = generator(p, use_cuda_graph=True, sync_every=4)
    eager = generator(p, use_cuda_graph=False)
    inputs = p.inputs((0, 1, 2))  # 3 rows in the 4-row bucket
    kwargs = dict(MODES[mode], max_new_tokens=NEW)
    got = graphed.generate(inputs, **kwargs)
    assert graphed.use_cuda_graph and len(graphed.captured) == 1  # really replayed a graph
    assert_same(got, eager.generate(inputs, **kwargs), atol=1e-5)
    again = graphed.generate(inputs, **kwargs)  # the same graph replayed again from a new prefill
    assert len(graphed.captured) == 1
    assert_same(again, got)


@pytest.mark.parametrize("family", FAMILIES)
def test_graphed_equals_guided_generate_eager_loop(family):
    p = cuda_pair(family)
    inputs = p.inputs((0, 1, 2))
    for mode in MODES:
        kwargs = dict(MODES[mode], max_new_tokens=NEW)
        want = tita_ext.guided_generate(p.base, p.reward, inputs, use_cuda_graph=False, **kwargs)
        assert_same(generator(p, use_cuda_graph=True).generate(inputs, **kwargs), want, atol=2e-5)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_two_stream_overlap_same_tokens(family):
    p = cuda_pair(family, torch.bfloat16)
    inputs = p.inputs((0, 1, 2))
    kwargs = dict(MODES["one_seed"], max_new_tokens=NEW)
    plain = generator(p, use_cuda_graph=True).generate(inputs, **kwargs)
    overlapped = generator(p, use_cuda_graph=True, overlap=True)
    assert_same(overlapped.generate(inputs, **kwargs), plain, atol=1e-4)  # same kernels, other stream
    assert overlapped.captured[0].overlap


def test_buckets_captured_once_in_one_pool():
    p = cuda_pair("llava")
    gen = generator(p, use_cuda_graph=True, buckets=(1, 2, 4))
    for rows in ((0, 1, 2), (1,), (2, 0), (0, 1, 2), (0,)):
        want = generator(p, use_cuda_graph=False).generate(p.inputs(rows), max_new_tokens=6)
        assert_same(gen.generate(p.inputs(rows), max_new_tokens=6), want, atol=1e-5)
    assert sorted(key.rows for key in gen.captured) == [1, 2, 4]
    assert gen.state._pool is not None and len(gen.state._captured) == 3


# CUDA runtime calls that block the host until the device catches up (a DtoH copy into pageable
# memory, as .item() / .tolist() / bool(tensor) do, appears as cudaMemcpyAsync + cudaStreamSynchronize).
HOST_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize", "cuMemcpyDtoH")


def host_syncs(fn) -> list[str]:
    """Names of the blocking CUDA runtime / driver calls fn() makes (torch.profiler's CPU-side
    record of the CUDA API), cudaMemcpyAsync excluded."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    torch.cuda.synchronize()
    names = {e.name for e in prof.events()}
    return sorted(n for n in names if n.startswith(HOST_SYNCS) and "Async" not in n)


def test_host_sync_detector_sees_a_sync():
    """The detector below can fail: a device-to-host read is seen, an async launch is not."""
    x = torch.ones(4, device="cuda")
    assert host_syncs(lambda: x.sum().item()), "a .item() must show a blocking call"
    assert host_syncs(lambda: torch.cuda.synchronize())
    assert host_syncs(lambda: x.add_(1)) == []


def test_replay_never_syncs_with_the_host():
    """A decode step's replay (the graph launch, the host bookkeeping around it) makes no blocking
    CUDA call, and the eager op path raises under sync-debug mode 'error' if anything syncs."""
    p = cuda_pair("qwen2_vl")
    gen = generator(p, use_cuda_graph=True)
    gen.generate(p.inputs((0, 1)), max_new_tokens=4, do_sample=True, seed=1)  # captures the 2-row step
    (key,) = gen.captured
    replay = gen.state.graph(key)
    assert host_syncs(lambda: [replay() for _ in range(3)]) == []
    # The fused op called eagerly with device seeds (what the eager step runs): no sync either.
    base, reward = torch.randn(2, 1000, device="cuda"), torch.randn(2, 1000, device="cuda")
    seed, offset = torch.tensor([3], device="cuda"), torch.tensor([0], device="cuda")
    tita_ext.guided_sample(base, reward, temperature=0.8, top_k=20, top_p=0.9, seed=seed, offset=offset,
                           check_status=False)  # first call: allocator and module set-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tita_ext.guided_sample(base, reward, temperature=0.8, top_k=20, top_p=0.9, seed=seed, offset=offset,
                               check_status=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert host_syncs(lambda: tita_ext.guided_sample(base, reward, temperature=0.8, top_k=20, top_p=0.9, seed=seed,
                                                     offset=offset, check_status=False)) == []


@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_sync_every_exact_on_gpu(sync_every):
    p = cuda_pair("llava")
    inputs = p.inputs((0, 1, 2))
    free = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=14, eos_token_id=[],
                                    use_cuda_graph=False)
    eos = [int(free.new_tokens[0, 2]), int(free.new_tokens[1, 6]), int(free.new_tokens[2, 4])]
    kwargs = dict(max_new_tokens=14, eos_token_id=eos, pad_token_id=0)
    want = generator(p, use_cuda_graph=True, sync_every=1).generate(inputs, **kwargs)
    got = generator(p, use_cuda_graph=True, sync_every=sync_every).generate(inputs, **kwargs)
    assert_same(got, want)
    assert got.new_tokens.shape[1] == int(got.lengths.max())


def test_guided_generate_uses_a_cached_graphed_generator():
    tita_ext.clear_generator_cache()
    p = cuda_pair("llava")
    inputs = p.inputs((0, 1))
    try:
        out = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=NEW, do_sample=True, seed=3)
        gen = gen_module._cache["entry"][1]
        assert gen.use_cuda_graph and gen.calls == 1 and len(gen.captured) == 1
        tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=NEW, do_sample=True, seed=4)
        assert gen_module._cache["entry"][1] is gen and gen.calls == 2 and len(gen.captured) == 1
        want = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=NEW, do_sample=True, seed=3,
                                        use_cuda_graph=False)
        assert_same(out, want, atol=2e-5)
    finally:
        tita_ext.clear_generator_cache()


def test_text_only_llama_pad_eos():
    """A pad id different from EOS, and the EOS list longer than the default stop slots."""
    p = cuda_pair("llama")
    inputs = p.inputs((0, 1))
    eos = [tiny.EOS_ID] + list(range(100, 110))
    kwargs = dict(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=tiny.PAD_ID)
    gen = generator(p, use_cuda_graph=True)
    assert_same(gen.generate(inputs, **kwargs), generator(p, use_cuda_graph=False).generate(inputs, **kwargs),
                atol=1e-5)


def test_inputs_on_the_cpu_and_a_reference_model():
    p = cuda_pair("llava")
    inputs = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in p.inputs((0, 1)).items()}
    gen = tita_ext.GuidedGenerator(p.base, p.reward, p.reward, max_batch_size=2, max_length=96, use_cuda_graph=True)
    out = gen.generate(inputs, max_new_tokens=NEW, alpha=0.7)
    assert out.sequences.device.type == "cuda" and out.token_rewards.abs().max() == 0
    eager = tita_ext.GuidedGenerator(p.base, p.reward, p.reward, max_batch_size=2, max_length=96, use_cuda_graph=False)
    assert_same(out, eager.generate(inputs, max_new_tokens=NEW, alpha=0.7), atol=1e-5)
