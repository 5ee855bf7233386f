"""generate's features in guided_generate (issue 15.8), against transformers' generate at alpha 0:
repetition_penalty, min_new_tokens, num_return_sequences (layout and per-copy seeds), per-row
streamers, GuidedOutput.text; and the same output from GuidedGenerator's static step, eagerly
and through the (faked) captured graph."""

from __future__ import annotations

import pytest
import torch
from generate_fixtures import FakeCapture, assert_same_output, pair, tokenizer

import tita_ext

NEW = 8


def hf_new_tokens(model, inputs, **kwargs) -> torch.Tensor:
    out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, **kwargs)
    return out[:, inputs["input_ids"].shape[1]:]


def guided(p, inputs, **kwargs) -> tita_ext.GuidedOutput:
    kwargs.setdefault("max_new_tokens", NEW)
    return tita_ext.guided_generate(p.base, p.reward, inputs, **kwargs)


def padded(out: tita_ext.GuidedOutput, width: int, pad: int) -> torch.Tensor:
    """new_tokens padded to `width` columns (generate runs until every row stopped, as we do)."""
    extra = width - out.new_tokens.shape[1]
    return torch.nn.functional.pad(out.new_tokens, (0, extra), value=pad) if extra > 0 else out.new_tokens


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "llama"])
@pytest.mark.parametrize("penalty", [4.0, 0.3])
def test_repetition_penalty_is_generates_at_alpha_zero(family, penalty):
    p = pair(family)
    inputs = p.inputs()
    want = hf_new_tokens(p.base, inputs, repetition_penalty=penalty)
    got = guided(p, inputs, alpha=0.0, repetition_penalty=penalty)
    assert torch.equal(padded(got, want.shape[1], p.base.generation_config.pad_token_id), want)
    if family == "llava":  # the test has power: the penalty changes these tokens (the tiny Llama never repeats)
        assert not torch.equal(want, hf_new_tokens(p.base, inputs))


def test_min_new_tokens_is_generates_at_alpha_zero():
    p = pair("llava")
    inputs = p.inputs()
    free = guided(p, inputs, alpha=0.0, eos_token_id=[])
    eos = int(free.new_tokens[0, 1])  # row 0 would stop at its second token
    want = hf_new_tokens(p.base, inputs, eos_token_id=eos, min_new_tokens=5)
    got = guided(p, inputs, alpha=0.0, eos_token_id=eos, min_new_tokens=5)
    assert torch.equal(padded(got, want.shape[1], p.base.generation_config.pad_token_id), want)
    assert int(got.lengths.min()) >= 5 and int(guided(p, inputs, alpha=0.0, eos_token_id=eos).lengths[0]) == 2


@pytest.mark.parametrize("kwargs", [dict(repetition_penalty=1.4), dict(min_new_tokens=4, eos_token_id=7),
                                    dict(repetition_penalty=1.2, min_new_tokens=3, do_sample=True, seed=[1, 2, 3])])
def test_processed_base_in_the_static_step_and_the_replay(monkeypatch, kwargs):
    """alpha 0.6: the eager loop, the generator's eager static step and its (faked) replay agree."""
    p = pair("llama")
    inputs = p.inputs()
    want = guided(p, inputs, alpha=0.6, **kwargs)
    eager = tita_ext.GuidedGenerator(p.base, p.reward, max_batch_size=4, max_length=40, use_cuda_graph=False)
    assert_same_output(eager.generate(inputs, max_new_tokens=NEW, **kwargs), want)
    fake = FakeCapture(monkeypatch)
    graphed = tita_ext.GuidedGenerator(p.base, p.reward, max_batch_size=4, max_length=40, use_cuda_graph=True)
    assert_same_output(graphed.generate(inputs, max_new_tokens=NEW, **kwargs), want)
    key = graphed.captured[0]
    assert fake.captures == 1 and (key.penalty, key.min_new) == ("repetition_penalty" in kwargs,
                                                                 "min_new_tokens" in kwargs)
    # The next call without them: a graph of its own, and the plain output.
    plain = guided(p, inputs, alpha=0.6, use_cuda_graph=False)
    assert_same_output(graphed.generate(inputs, max_new_tokens=NEW), plain)
    assert fake.captures == 2


def test_repetition_penalty_keeps_the_token_reward():
    """The penalty moves the base's log-probs only: token rewards are log p_reward - log p_base of
    the unpenalised base, whatever token is chosen."""
    p = pair("llama")
    inputs = p.inputs((0,))
    out = guided(p, inputs, alpha=0.6, repetition_penalty=2.0, eos_token_id=[])
    # Recompute the first token's reward from the models' own prefill logits (over the shared width).
    with torch.no_grad():
        reward = torch.log_softmax(p.reward(**inputs).logits[0, -1].float(), -1)
        base = torch.log_softmax(p.base(**inputs).logits[0, -1, :reward.shape[0]].float(), -1)
    token = int(out.new_tokens[0, 0])
    torch.testing.assert_close(out.token_rewards[0, 0], reward[token] - base[token], atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_num_return_sequences_layout_and_seeds(family):
    p = pair(family)
    inputs = p.inputs((0, 1))
    hf = p.base.generate(**inputs, max_new_tokens=2, do_sample=True, num_return_sequences=3)
    kwargs = dict(do_sample=True, temperature=0.9, max_new_tokens=4, eos_token_id=[])
    out = guided(p, inputs, num_return_sequences=3, seed=[10, 11, 12, 13, 14, 15], **kwargs)
    length = inputs["input_ids"].shape[1]
    assert out.sequences.shape[0] == 6
    assert torch.equal(out.sequences[:, :length], hf[:, :length])  # generate's row layout
    for row in range(6):  # row r is prompt r // 3 with seed 10 + r
        single = guided(p, p.inputs((row // 3,)), seed=[10 + row], **kwargs)
        assert torch.equal(single.new_tokens[0], out.new_tokens[row]), f"row {row}"
    one_seed = guided(p, inputs, num_return_sequences=3, seed=5, **kwargs)
    assert len({tuple(r) for r in one_seed.new_tokens[:3].tolist()}) > 1  # copies draw their own noise


def test_num_return_sequences_expands_per_prompt_parameters():
    p = pair("llama")
    inputs = p.inputs((0, 1))
    kwargs = dict(do_sample=True, max_new_tokens=4, seed=3, eos_token_id=[])
    out = guided(p, inputs, num_return_sequences=2, temperature=[0.0, 1.0], **kwargs)
    expanded = guided(p, p.inputs((0, 0, 1, 1)), temperature=[0.0, 0.0, 1.0, 1.0], **kwargs)
    assert torch.equal(out.new_tokens, expanded.new_tokens)
    assert torch.equal(out.new_tokens[0], out.new_tokens[1])  # temperature 0: both copies greedy


class Recorder:
    """A streamer that keeps what it was given."""

    def __init__(self):
        self.puts: list[torch.Tensor] = []
        self.ends = 0

    def put(self, value):
        self.puts.append(value.clone())

    def end(self):
        self.ends += 1


@pytest.mark.parametrize("engine", ["eager", "generator"])
def test_per_row_streamers(engine):
    p = pair("llava")
    inputs = p.inputs()
    free = guided(p, inputs, eos_token_id=[])
    eos = int(free.new_tokens[1, 2])  # stops row 1 early
    streams = [Recorder() for _ in range(3)]
    kwargs = dict(eos_token_id=eos, streamer=streams, tokenizer=tokenizer())
    if engine == "eager":
        out = guided(p, inputs, **kwargs)
    else:
        gen = tita_ext.GuidedGenerator(p.base, p.reward, max_batch_size=4, max_length=64)
        out = gen.generate(inputs, max_new_tokens=NEW, **kwargs)
    assert int(out.lengths[1]) < NEW
    for row, stream in enumerate(streams):
        prompt = inputs["input_ids"][row][inputs["attention_mask"][row].bool()]
        assert torch.equal(stream.puts[0], prompt.unsqueeze(0))  # the prompt, as generate at batch 1
        assert all(put.shape == (1,) for put in stream.puts[1:])
        assert torch.cat(stream.puts[1:]).tolist() == out.new_tokens[row, :int(out.lengths[row])].tolist()
        assert stream.ends == 1


def test_text_per_row():
    p = pair("llama")
    out = guided(p, p.inputs(), tokenizer=tokenizer())
    tok = tokenizer()
    assert out.text == [tok.decode(out.new_tokens[r, :int(out.lengths[r])], skip_special_tokens=True)
                        for r in range(3)]
    assert guided(p, p.inputs()).text is None
