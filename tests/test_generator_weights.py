"""Captured graphs and static caches are tied to where the models' weights live: after
`model.to(dtype)` or `load_state_dict(assign=True)` a GuidedGenerator (and guided_generate's cached
one) rebuilds them before decoding; in-place weight updates keep them. The capture is faked on
the CPU (FakeCapture): what is tested is the invalidation logic, the CUDA replay itself is
tested in test_graphs_cuda.py."""

from __future__ import annotations

import copy

import pytest
import torch
from generate_fixtures import FakeCapture, assert_same_output, pair

import tita_ext
from tita_ext import generator as gen_module
from tita_ext import tiny_models as tiny
from tita_ext.weights_key import weights_key

NEW = 6


@pytest.fixture
def models():
    p = pair("llama")
    return copy.deepcopy(p.base), copy.deepcopy(p.reward), p.inputs((0, 1, 2))


def eager(base, reward, inputs):
    return tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW, use_cuda_graph=False)


def test_weights_key_follows_the_storage(models):
    base, reward, _ = models
    key = weights_key({"base": base})
    with torch.no_grad():
        base.get_input_embeddings().weight.add_(1.0)  # in place: same storage, same key
    assert weights_key({"base": base}) == key
    base.load_state_dict(tiny.tiny_llama(seed=5).state_dict(), assign=True)
    assert weights_key({"base": base}) != key
    key = weights_key({"base": base})
    base.to(torch.bfloat16)
    assert weights_key({"base": base}) != key


def test_generator_rebuilds_after_weights_move(monkeypatch, models):
    base, reward, inputs = models
    fake = FakeCapture(monkeypatch)
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=4, max_length=32, use_cuda_graph=True)
    before = gen.generate(inputs, max_new_tokens=NEW)
    assert gen.rebuilds == 0 and len(gen.captured) == 1 and fake.captures == 1

    # In-place update: same addresses, the captured graph stays valid.
    base.load_state_dict(tiny.tiny_llama(seed=7).state_dict())
    assert_same_output(gen.generate(inputs, max_new_tokens=NEW), eager(base, reward, inputs))
    assert gen.rebuilds == 0 and fake.captures == 1

    # assign=True: new tensors; the old graph would read freed weights.
    old_state = gen.state
    base.load_state_dict(tiny.tiny_llama(seed=5).state_dict(), assign=True)
    got = gen.generate(inputs, max_new_tokens=NEW)
    assert gen.rebuilds == 1 and gen.state is not old_state and fake.captures == 2
    assert_same_output(got, eager(base, reward, inputs))
    assert not torch.equal(got.new_tokens, before.new_tokens)  # the new weights really decode differently

    # Another dtype: static caches in the new dtype, a new capture.
    base.to(torch.bfloat16)
    reward.to(torch.bfloat16)
    got = gen.generate(inputs, max_new_tokens=NEW)
    assert gen.rebuilds == 2 and fake.captures == 3
    assert all(runner.cache.layers[0].keys.dtype == torch.bfloat16 for runner in gen.runners.values())
    want = eager(base, reward, inputs)  # bf16: the static cache's summation order shows in the log-probs
    assert torch.equal(got.new_tokens, want.new_tokens)
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=2e-2, rtol=0)


def test_cached_generator_is_replaced_after_weights_move(monkeypatch, models):
    base, reward, inputs = models
    FakeCapture(monkeypatch)
    tita_ext.clear_generator_cache()
    try:
        tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW)
        first = gen_module._cache["entry"][1]
        tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW)
        assert gen_module._cache["entry"][1] is first
        reward.load_state_dict(tiny.tiny_llama(seed=9, hidden_size=32, layers=1, vocab_width=448).state_dict(),
                               assign=True)
        got = tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW)
        assert gen_module._cache["entry"][1] is not first
        assert_same_output(got, eager(base, reward, inputs))
    finally:
        tita_ext.clear_generator_cache()
