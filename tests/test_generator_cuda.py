"""The engine's CUDA-graph hazards on a GPU (issue 13.6, 15.1, 15.8): a replay after
`load_state_dict(assign=True)` or `.to(dtype)` decodes with the new weights (the generator rebuilt
and recaptured), repetition_penalty / min_new_tokens inside the captured step give the eager
tokens, int seeds and per-row lists are loaded before the capture (the capture raises on any
pageable host-to-device copy), and threads sharing a graphed generator get the sequential tokens.
Skipped without CUDA (the CPU side: test_generator_weights.py, test_generate_features.py,
test_engine_threads.py)."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from generate_fixtures import pair

import tita_ext
from tita_ext import tiny_models as tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

NEW = 10


def on_cuda(p):
    base, reward = copy.deepcopy(p.base).cuda(), copy.deepcopy(p.reward).cuda()
    inputs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in p.inputs().items()}
    return base, reward, inputs


def same_tokens(got, want):
    assert torch.equal(got.new_tokens, want.new_tokens) and torch.equal(got.lengths, want.lengths)


def test_replay_after_weights_move_reads_the_new_weights():
    base, reward, inputs = on_cuda(pair("llama"))
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=4, max_length=48, use_cuda_graph=True)
    gen.generate(inputs, max_new_tokens=NEW)
    base.load_state_dict(tiny.tiny_llama(seed=5).state_dict(), assign=True)
    torch.cuda.empty_cache()  # the old weights' memory may now be reused: a stale replay would read garbage
    base.cuda()
    got = gen.generate(inputs, max_new_tokens=NEW)
    want = tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW, use_cuda_graph=False)
    assert gen.rebuilds >= 1 and gen.use_cuda_graph
    same_tokens(got, want)
    base.to(torch.bfloat16)
    reward.to(torch.bfloat16)
    got = gen.generate(inputs, max_new_tokens=NEW)
    same_tokens(got, tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW, use_cuda_graph=False))


@pytest.mark.parametrize("kwargs", [dict(repetition_penalty=1.5), dict(min_new_tokens=5, eos_token_id=7),
                                    dict(repetition_penalty=1.3, do_sample=True, top_p=[0.9, 0.8, 1.0], seed=3)])
def test_processed_base_and_host_values_in_the_captured_step(kwargs):
    base, reward, inputs = on_cuda(pair("llava"))
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=4, max_length=96, use_cuda_graph=True)
    got = gen.generate(inputs, max_new_tokens=NEW, **kwargs)
    assert gen.use_cuda_graph and len(gen.captured) == 1  # captured (a host copy inside would have failed it)
    want = tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW, use_cuda_graph=False, **kwargs)
    same_tokens(got, want)


def test_threads_share_a_graphed_generator():
    base, reward, inputs = on_cuda(pair("llava"))
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=4, max_length=64, use_cuda_graph=True)
    seeds = list(range(12))
    sequential = [gen.generate(inputs, max_new_tokens=NEW, do_sample=True, seed=s) for s in seeds]
    results = [None] * len(seeds)

    def work(first):
        for index in range(first, len(seeds), 4):
            results[index] = gen.generate(inputs, max_new_tokens=NEW, do_sample=True, seed=seeds[index])

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, sequential):
        same_tokens(got, want)
