"""GuidedGenerator on the CPU: its eager decoding on static KV caches gives guided_generate's output
(tiny LLaVA, Qwen2-VL, Qwen2.5-VL, Llama; greedy, one seed, per-row seeds; left-padded batches
padded up to a bucket), sync_every does not change the output, repeated calls reuse the caches,
the captured-step machinery (warm-up undone, replay per bucket) is exercised with the capture
replaced by the eager step, and bad arguments get clear errors. The CUDA-graph capture itself is
tested in test_graphs_cuda.py (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from generate_fixtures import FAMILIES, FakeCapture, assert_same_output, pair, tokenizer

import tita_ext
from tita_ext import generator as gen_module
from tita_ext import graphs
from tita_ext import tiny_models as tiny

NEW = 8
MODES = {
    "greedy": dict(),
    "one_seed": dict(do_sample=True, temperature=0.9, top_k=40, seed=5),
    "row_seeds": dict(do_sample=True, temperature=1.1, top_p=0.9, seed=[11, 12, 13]),
}


def make(p, **kwargs) -> tita_ext.GuidedGenerator:
    kwargs.setdefault("max_batch_size", 4)
    kwargs.setdefault("max_length", 64)
    return tita_ext.GuidedGenerator(p.base, p.reward, kwargs.pop("ref_model", None), **kwargs)


@pytest.fixture(scope="module")
def generators():
    """One generator per family, shared by the tests (as a user would keep it)."""
    return {family: make(pair(family), sync_every=3) for family in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", list(MODES))
def test_eager_generator_matches_guided_generate(generators, family, mode):
    p = pair(family)
    inputs = p.inputs((0, 1, 2))  # left padded, 3 rows: run in the 4-row bucket
    assert inputs["attention_mask"].min() == 0
    gen = generators[family]
    assert not gen.use_cuda_graph and gen.static
    want = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=NEW, **MODES[mode])
    got = gen.generate(inputs, max_new_tokens=NEW, **MODES[mode])
    assert gen.last_bucket == 4
    assert_same_output(got, want)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_single_row_and_two_rows(generators, family):
    p = pair(family)
    gen = generators[family]
    for rows, bucket in (((1,), 1), ((2, 0), 2)):
        inputs = p.inputs(rows)
        kwargs = dict(do_sample=True, temperature=0.8, seed=3, max_new_tokens=NEW)
        assert_same_output(gen.generate(inputs, **kwargs),
                           tita_ext.guided_generate(p.base, p.reward, inputs, **kwargs))
        assert gen.last_bucket == bucket


def _eos_at(p, inputs, steps: list[int]) -> tuple[list[int], tita_ext.GuidedOutput]:
    """EOS ids that stop rows at different steps of a free run (with eos_token_id=[])."""
    free = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=12, eos_token_id=[])
    return [int(free.new_tokens[row, step]) for row, step in enumerate(steps)], free


@pytest.mark.parametrize("sync_every", [1, 2, 5, 64])
def test_sync_every_gives_the_exact_output(sync_every):
    p = pair("llava")
    inputs = p.inputs((0, 1, 2))
    eos, free = _eos_at(p, inputs, [2, 5, 3])
    want = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert want.new_tokens.shape[1] < 12  # every row stops before max_new_tokens: the loop ends early
    got = make(p, sync_every=sync_every).generate(inputs, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    assert_same_output(got, want)
    assert got.finish_reason.count("eos") == 3


def test_eos_mid_way_pads_and_keeps_other_rows():
    p = pair("qwen2_vl")
    inputs = p.inputs((0, 1, 2))
    free = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=10, eos_token_id=[])
    eos = int(free.new_tokens[1, 3])
    kwargs = dict(max_new_tokens=10, eos_token_id=[tiny.VIDEO_ID, eos], pad_token_id=0)
    want = tita_ext.guided_generate(p.base, p.reward, inputs, **kwargs)
    got = make(p, sync_every=4).generate(inputs, **kwargs)
    assert_same_output(got, want)
    n = int(got.lengths[1])
    assert got.finish_reason[1] == "eos" and (got.new_tokens[1, n:] == 0).all()
    assert (got.logprobs[1, n:] == 0).all() and (got.token_rewards[1, n:] == 0).all()


def test_repeated_calls_reuse_the_caches():
    p = pair("qwen2_5_vl")
    gen = make(p, max_batch_size=3, buckets=(1, 2))  # buckets 1, 2 and then 3 (max_batch_size)
    assert gen.buckets == (1, 2, 3)
    keys = [layer.keys for runner in gen.runners.values() for layer in runner.cache.layers]
    pointers = [k.data_ptr() for k in keys]
    for rows, mode in (((0, 1, 2), "greedy"), ((1,), "one_seed"), ((2, 0), "greedy"), ((0, 1, 2), "row_seeds"),
                       ((0, 1), "greedy")):
        inputs = p.inputs(rows)
        kwargs = dict(MODES[mode], max_new_tokens=6)
        if mode == "row_seeds":
            kwargs["seed"] = kwargs["seed"][:len(rows)]
        assert_same_output(gen.generate(inputs, **kwargs), tita_ext.guided_generate(p.base, p.reward, inputs, **kwargs))
    assert gen.calls == 5
    assert [layer.keys.data_ptr() for runner in gen.runners.values() for layer in runner.cache.layers] == pointers


def test_per_row_parameters_reference_model_and_reward_inputs():
    p = pair("llava")
    inputs = p.inputs((0, 1))
    gen = make(p, ref_model=p.reward)
    kwargs = dict(alpha=[0.0, 1.5], max_new_tokens=NEW, do_sample=True, temperature=[0.0, 0.7], seed=9,
                  reward_inputs=inputs)
    want = tita_ext.guided_generate(p.base, p.reward, inputs, ref_model=p.reward, **kwargs)
    got = gen.generate(inputs, **kwargs)
    assert_same_output(got, want)
    assert got.token_rewards.abs().max() == 0  # reference = reward


def test_stop_strings_and_streamer_match():
    p = pair("llava")
    tok = tokenizer()
    inputs = p.inputs((0, 1))
    free = tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=12, eos_token_id=[])
    stop = tok.decode(free.new_tokens[0, 2:4])
    streamed = {}
    for name, fn in (("want", lambda **kw: tita_ext.guided_generate(p.base, p.reward, inputs, **kw)),
                     ("got", lambda **kw: make(p, sync_every=6).generate(inputs, **kw))):
        calls = []

        class Streamer:
            def put(self, value):
                calls.append(value.clone())

            def end(self):
                calls.append(None)

        out = fn(max_new_tokens=12, eos_token_id=[], stop_strings=[stop], tokenizer=tok, streamer=Streamer())
        streamed[name] = (out, calls)
    (got, got_calls), (want, want_calls) = streamed["got"], streamed["want"]
    assert_same_output(got, want)
    assert "stop_string" in got.finish_reason
    assert len(got_calls) == len(want_calls) and got_calls[-1] is None
    assert all(torch.equal(a, b) for a, b in zip(got_calls[:-1], want_calls[:-1]))


def test_generator_seed_reproducible_and_generator_argument():
    p = pair("llama")
    gen = make(p)
    inputs = p.inputs((0, 1))
    kwargs = dict(do_sample=True, temperature=1.0, max_new_tokens=10)
    a, b = gen.generate(inputs, seed=4, **kwargs), gen.generate(inputs, seed=4, **kwargs)
    assert torch.equal(a.new_tokens, b.new_tokens)
    assert not torch.equal(a.new_tokens, gen.generate(inputs, seed=5, **kwargs).new_tokens)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert_same_output(gen.generate(inputs, generator=g1, **kwargs),
                       tita_ext.guided_generate(p.base, p.reward, inputs, generator=g2, **kwargs))


# ---- the captured-step machinery, with the capture replaced by the eager step ------------------

@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "llama"])
def test_replayed_step_after_undone_warm_up_matches_eager(monkeypatch, family):
    p = pair(family)
    eager = make(p, use_cuda_graph=False, sync_every=2)
    fake = FakeCapture(monkeypatch)
    graphed = make(p, use_cuda_graph=True, sync_every=2)
    assert graphed.use_cuda_graph and not eager.use_cuda_graph
    for rows, mode in (((0, 1, 2), "greedy"), ((0, 1, 2), "row_seeds"), ((1,), "one_seed"), ((0, 1, 2), "greedy")):
        inputs = p.inputs(rows)
        kwargs = dict(MODES[mode], max_new_tokens=NEW)
        got, want = graphed.generate(inputs, **kwargs), eager.generate(inputs, **kwargs)
        # The same ops in the same order: bit-identical, log-probs included.
        assert torch.equal(got.new_tokens, want.new_tokens)
        assert torch.equal(got.logprobs, want.logprobs) and torch.equal(got.token_rewards, want.token_rewards)
    # One capture per (bucket, settings): 4 rows greedy, 4 rows per-row seeds, 1 row one seed; reused after.
    assert fake.captures == 3 and fake.warmups == 3 and len(graphed.captured) == 3
    assert {key.rows for key in graphed.captured} == {1, 4}


def test_capture_failure_falls_back_or_raises(monkeypatch):
    p = pair("llama")
    inputs = p.inputs((0, 1))
    FakeCapture(monkeypatch, fail=True)
    auto = make(p, use_cuda_graph=None)
    assert auto.use_cuda_graph
    with pytest.warns(UserWarning, match="decoding eagerly"):
        got = auto.generate(inputs, max_new_tokens=NEW)
    assert not auto.use_cuda_graph and "capture failed" in auto.why_eager
    assert_same_output(got, tita_ext.guided_generate(p.base, p.reward, inputs, max_new_tokens=NEW))
    required = make(p, use_cuda_graph=True)
    with pytest.raises(RuntimeError, match="use_cuda_graph=False"):
        required.generate(inputs, max_new_tokens=NEW)


def test_guided_generate_reuses_one_cached_generator(monkeypatch):
    FakeCapture(monkeypatch)
    tita_ext.clear_generator_cache()
    p = pair("llava")
    try:
        small = p.inputs((0,))
        out = tita_ext.guided_generate(p.base, p.reward, small, max_new_tokens=NEW)
        first = gen_module._cache["entry"][1]
        assert first.max_batch_size == 1 and first.max_length % 256 == 0 and first.calls == 1
        assert_same_output(out, tita_ext.guided_generate(p.base, p.reward, small, max_new_tokens=NEW,
                                                         use_cuda_graph=False))
        tita_ext.guided_generate(p.base, p.reward, small, max_new_tokens=NEW, seed=1, do_sample=True)
        assert gen_module._cache["entry"][1] is first and first.calls == 2
        big = p.inputs((0, 1, 2))  # more rows than the cached generator holds: replaced by a larger one
        out = tita_ext.guided_generate(p.base, p.reward, big, max_new_tokens=NEW)
        second = gen_module._cache["entry"][1]
        assert second is not first and second.max_batch_size == 4
        assert_same_output(out, tita_ext.guided_generate(p.base, p.reward, big, max_new_tokens=NEW,
                                                         use_cuda_graph=False))
        q = pair("llama")  # other models: their own generator
        tita_ext.guided_generate(q.base, q.reward, q.inputs((0,)), max_new_tokens=4)
        assert gen_module._cache["entry"][1].models["base"] is q.base
    finally:
        tita_ext.clear_generator_cache()
    assert "entry" not in gen_module._cache


def test_guided_generate_on_cpu_keeps_its_eager_loop():
    tita_ext.clear_generator_cache()
    p = pair("llama")
    tita_ext.guided_generate(p.base, p.reward, p.inputs((0,)), max_new_tokens=4)
    assert "entry" not in gen_module._cache  # no CUDA: no cached generator, no static caches


# ---- fallbacks and errors --------------------------------------------------------------------

def _sliding_window_pair():
    """Mistral with sliding-window attention: its StaticCache has sliding layers (unsupported)."""
    from transformers import MistralConfig, MistralForCausalLM

    def build(seed, hidden):
        config = MistralConfig(vocab_size=tiny.VOCAB_WIDTH, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
                               bos_token_id=tiny.BOS_ID, eos_token_id=tiny.EOS_ID, pad_token_id=tiny.PAD_ID)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MistralForCausalLM(config).eval()
        model.generation_config.pad_token_id = tiny.PAD_ID
        return model

    return build(0, 64), build(1, 32)


def test_model_without_static_cache_support_decodes_on_dynamic_caches():
    base, reward = _sliding_window_pair()
    inputs = tokenizer()(["USER: hi ASSISTANT:", "USER: What is in the picture? ASSISTANT:"], return_tensors="pt",
                         padding=True)
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=64)
    assert not gen.static and "StaticSlidingWindowLayer" in gen.fallback_reason
    assert "dynamic caches" in repr(gen)
    kwargs = dict(max_new_tokens=6, eos_token_id=[], do_sample=True, seed=2)
    assert_same_output(gen.generate(inputs, **kwargs), tita_ext.guided_generate(base, reward, inputs, **kwargs))
    with pytest.raises(ValueError, match="no static cache"):
        tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=64, use_cuda_graph=True)


def test_bad_arguments_have_clear_errors():
    p = pair("llava")
    gen = make(p, max_batch_size=2, max_length=40)
    with pytest.raises(ValueError, match="max_batch_size=2"):
        gen.generate(p.inputs((0, 1, 2)), max_new_tokens=2)
    length = p.inputs((0,))["input_ids"].shape[1]
    with pytest.raises(ValueError, match="max_length=40"):
        gen.generate(p.inputs((0,)), max_new_tokens=41 - length)
    gen.generate(p.inputs((0,)), max_new_tokens=40 - length)  # exactly full: fine
    with pytest.raises(ValueError, match="sync_every"):
        make(p, sync_every=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        make(p, max_batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        make(p, max_length=1)
    with pytest.raises(ValueError, match="bucket"):
        make(p, buckets=(0, 2))
    with pytest.raises(ValueError, match="buckets"):
        make(p, buckets=())
    with pytest.raises(ValueError, match="use_cuda_graph"):
        make(p, use_cuda_graph="yes")
    with pytest.raises(ValueError, match="CUDA graphs need CUDA"):
        make(p, use_cuda_graph=True)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA"):
        tita_ext.guided_generate(p.base, p.reward, p.inputs((0,)), max_new_tokens=2, use_cuda_graph=True)
    with pytest.raises(ValueError, match="use_cuda_graph must be"):
        tita_ext.guided_generate(p.base, p.reward, p.inputs((0,)), max_new_tokens=2, use_cuda_graph=1)
    with pytest.raises(TypeError, match="reward_model"):
        tita_ext.GuidedGenerator(p.base, object(), max_batch_size=1, max_length=8)
    with pytest.raises(ValueError, match="per-row"):
        gen.generate(p.inputs((0, 1)), max_new_tokens=2, alpha=[0.1, 0.2, 0.3])


def test_bucket_sizes():
    assert gen_module.bucket_sizes((1, 2, 4, 8, 16, 32), 8) == (1, 2, 4, 8)
    assert gen_module.bucket_sizes((1, 2, 4, 8, 16, 32), 5) == (1, 2, 4, 8)
    assert gen_module.bucket_sizes((4, 1), 40) == (1, 4, 40)
    assert gen_module.bucket_sizes((8,), 3) == (8,)


def test_base_model_alone_is_its_greedy_generate():
    p = pair("qwen2_vl")
    inputs = p.inputs((0, 1, 2))
    alone = tita_ext.GuidedGenerator(p.base, None, max_batch_size=4, max_length=64)
    assert list(alone.models) == ["base"]
    out = alone.generate(inputs, max_new_tokens=NEW, alpha=0.9)
    want = p.base.generate(**inputs, max_new_tokens=NEW, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(out.new_tokens, want)
    assert out.token_rewards.abs().max() == 0
    with pytest.raises(ValueError, match="ref_model was given without reward_model"):
        tita_ext.GuidedGenerator(p.base, None, p.reward, max_batch_size=1, max_length=8)


def test_graph_safe_decode_advance_matches_the_reference():
    from tita_ext import reference

    g = torch.Generator().manual_seed(0)
    for batch, slots in ((1, 0), (1, 12), (5, 3), (32, 40)):
        sampled = torch.randint(-1, 50, (batch,), generator=g)
        finished = torch.rand(batch, generator=g) < 0.3
        stops = torch.cat([torch.randint(0, 50, (slots,), generator=g), torch.full((2,), -1)])  # -1: unused slots
        want = reference.decode_advance(sampled, finished, stops, 7)
        got = graphs.decode_advance_broadcast(sampled, finished, stops, 7)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_models_of_two_families_with_their_own_prompt_lengths():
    """A LLaVA base (16 image tokens per image) guided by a Qwen2-VL reward (4): each static cache
    holds its own prompt length and advances its own write position."""
    llava, qwen = pair("llava"), pair("qwen2_vl")
    rows = (0, 1, 2)
    inputs, reward_inputs = llava.inputs(rows), qwen.inputs(rows)
    assert inputs["input_ids"].shape[1] != reward_inputs["input_ids"].shape[1]
    kwargs = dict(reward_inputs=reward_inputs, max_new_tokens=NEW, do_sample=True, temperature=0.8, seed=[1, 2, 3])
    gen = tita_ext.GuidedGenerator(llava.base, qwen.reward, max_batch_size=4, max_length=64, sync_every=2)
    assert_same_output(gen.generate(inputs, **kwargs),
                       tita_ext.guided_generate(llava.base, qwen.reward, inputs, **kwargs))
    lengths = [runner.prompt_length for runner in gen.runners.values()]
    assert lengths == [inputs["input_ids"].shape[1], reward_inputs["input_ids"].shape[1]]


class _NoHostReads:
    """A dispatch mode that fails on the ops that read device values on the host (.item(),
    bool(tensor), data-dependent shapes) or make a tensor from host data (torch.tensor(...) of
    an int seed or a per-row list: a pageable host-to-device copy on CUDA): none may run inside a
    step that CUDA graphs capture. (Copies to the host cannot be seen on the CPU: the GPU test
    checks a replay for syncs.)"""

    HOST_OPS = ("aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.nonzero", "aten.masked_select",
                "aten._unique", "aten._unique2", "aten.unique_dim", "aten.unique_consecutive", "aten.equal",
                "aten.lift_fresh")

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(getattr(func, "overloadpacket", func))
                if name.startswith(cls.HOST_OPS):
                    raise AssertionError(f"{name} reads a device value on the host inside the decode step")
                return func(*args, **(kwargs or {}))

        return Mode()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("backend", ["reference", "compiled"])
def test_decode_step_reads_nothing_on_the_host(family, backend):
    """The captured step's ops (both forwards on static caches, the fused op, the bookkeeping) on
    the CPU, watched op by op: none needs the host, so the CUDA capture cannot stall or fail on one."""
    if backend == "compiled" and not tita_ext.compiled_available("cpu"):
        pytest.skip("compiled module not built")
    p = pair(family)
    gen = make(p, backend=backend)
    # Per-row lists and seeds: turned into device tensors by DecodeStep.load, before any step.
    out = gen.generate(p.inputs(), max_new_tokens=2, do_sample=True, top_k=5, top_p=[0.9, 0.8, 1.0], min_p=0.01,
                       plausibility=0.001, seed=[1, 2, 3])
    assert out.new_tokens.shape == (3, 2)
    key = graphs.GraphKey(rows=4, per_row_seed=True, pad_token_id=tiny.PAD_ID, vocab=-1, overlap=False)
    with torch.inference_mode():
        with _NoHostReads():
            gen.state.step(key)
        with pytest.raises(AssertionError, match="is_nonzero"), _NoHostReads():
            bool(gen.state.done)  # the watcher does catch a host read
        with pytest.raises(AssertionError, match="lift_fresh"), _NoHostReads():
            torch.tensor([7])  # and a tensor made from host data


def test_environment_switch_turns_the_cached_generator_off(monkeypatch):
    FakeCapture(monkeypatch)
    tita_ext.clear_generator_cache()
    p = pair("llama")
    monkeypatch.setenv("TITA_EXT_CUDA_GRAPHS", "0")
    tita_ext.guided_generate(p.base, p.reward, p.inputs((0,)), max_new_tokens=3)
    assert "entry" not in gen_module._cache
    monkeypatch.delenv("TITA_EXT_CUDA_GRAPHS")
    try:
        tita_ext.guided_generate(p.base, p.reward, p.inputs((0,)), max_new_tokens=3)
        assert "entry" in gen_module._cache
    finally:
        tita_ext.clear_generator_cache()


def test_model_split_over_devices_is_not_given_a_static_cache():
    from tita_ext.adapters import StaticCacheUnsupported, check_static_cache_support

    p = pair("llama")
    check_static_cache_support(p.base)
    p.base.hf_device_map = {"model.layers.0": 0, "model.layers.1": 1}
    try:
        with pytest.raises(StaticCacheUnsupported, match="several devices"):
            check_static_cache_support(p.base)
        assert not make(p).static
    finally:
        del p.base.hf_device_map


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava"])
def test_positions_live_on_the_device_and_advance_in_place(family):
    """Multimodal rope: the next positions (all sections, rope_deltas included) are set once at the
    prefill, as the model's own generate makes them, and each step adds one in place."""
    from tita_ext.adapters import ModelRunner

    p = pair(family)
    inputs = p.inputs((0, 1, 2))
    gen = make(p)
    runner = gen.runners["base"]
    buffer = None
    for new in (3, 7):
        gen.generate(inputs, max_new_tokens=new, eos_token_id=[])
        assert buffer is None or runner.positions is buffer  # the same tensor every call
        buffer = runner.positions
        with torch.inference_mode():
            planned = ModelRunner(p.base, inputs, new)
            planned.prefill()
            first = planned.next_positions  # [B, 1] or [sections, B, 1]
        assert torch.equal(runner.positions[..., :3, :], first + (new - 1))  # new - 1 forward steps
    text_next = inputs["attention_mask"].sum(-1)  # where a text-only model's next position would be
    if family == "llava":
        assert torch.equal(first.view(-1), text_next)
    else:  # each image's 2x2 merged patches take 2 rope positions for 4 tokens: rope_deltas = -2
        assert first.shape[0] in (3, 4) and torch.equal(first[-1].view(-1), text_next - 2)
