"""guided_generate on tiny LLaVA, Qwen2-VL, Qwen2.5-VL and Llama pairs: agreement with the models'
own `generate`, batches vs single runs, seeds, per-row parameters, stopping, streaming, rewards."""

from __future__ import annotations

import pytest
import torch
from generate_fixtures import FAMILIES, pair, tokenizer

import tita_ext
from tita_ext import tiny_models as tiny

NEW = 8


def hf_greedy(model, inputs, new=NEW) -> torch.Tensor:
    """`generate`'s greedy new tokens (rows that hit EOS padded, as guided_generate pads them)."""
    out = model.generate(**inputs, max_new_tokens=new, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:]


def guided(p, inputs, **kwargs) -> tita_ext.GuidedOutput:
    kwargs.setdefault("max_new_tokens", NEW)
    return tita_ext.guided_generate(p.base, p.reward, inputs, **kwargs)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_is_base_generate(family):
    p = pair(family)
    inputs = p.inputs()
    out = guided(p, inputs, alpha=0.0)
    assert torch.equal(out.new_tokens, hf_greedy(p.base, inputs))
    assert torch.equal(out.sequences[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_one_is_reward_generate(family):
    p = pair(family)
    inputs = p.inputs()
    assert torch.equal(guided(p, inputs, alpha=1.0).new_tokens, hf_greedy(p.reward, inputs))


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("alpha", [0.6, 1.5])
def test_reward_equal_to_base_gives_base(family, alpha):
    p = pair(family)
    inputs = p.inputs()
    out = tita_ext.guided_generate(p.base, p.base, inputs, alpha=alpha, max_new_tokens=NEW)
    assert torch.equal(out.new_tokens, hf_greedy(p.base, inputs))
    assert out.token_rewards.abs().max() == 0


@pytest.mark.parametrize("family", ["llava", "llama"])
def test_reference_equal_to_reward_gives_base(family):
    p = pair(family)
    inputs = p.inputs()
    out = guided(p, inputs, alpha=0.8, ref_model=p.reward)
    assert torch.equal(out.new_tokens, hf_greedy(p.base, inputs))
    assert out.token_rewards.abs().max() == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("sampling", [False, True])
def test_left_padded_batch_equals_single_runs(family, sampling):
    p = pair(family)
    kwargs = dict(alpha=0.6)
    if sampling:
        kwargs.update(do_sample=True, temperature=0.9, top_k=40, seed=[11, 12, 13])
    batch = guided(p, p.inputs((0, 1, 2)), **kwargs)
    assert p.inputs((0, 1, 2))["attention_mask"].min() == 0  # the prompts really are padded
    for row in range(3):
        if sampling:
            kwargs["seed"] = [11 + row]
        single = guided(p, p.inputs((row,)), **kwargs)
        n = int(single.lengths[0])
        assert n == batch.lengths[row] and single.finish_reason[0] == batch.finish_reason[row]
        assert torch.equal(single.new_tokens[0, :n], batch.new_tokens[row, :n]), f"row {row}"
        torch.testing.assert_close(single.token_rewards[0, :n], batch.token_rewards[row, :n], atol=1e-4, rtol=0)


def test_seed_reproducible_and_distinct():
    p = pair("llava")
    inputs = p.inputs()
    kwargs = dict(alpha=0.6, do_sample=True, temperature=1.0, max_new_tokens=12)
    a = guided(p, inputs, seed=5, **kwargs)
    b = guided(p, inputs, seed=5, **kwargs)
    c = guided(p, inputs, seed=6, **kwargs)
    assert torch.equal(a.new_tokens, b.new_tokens)
    assert not torch.equal(a.new_tokens, c.new_tokens)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(guided(p, inputs, generator=g1, **kwargs).new_tokens,
                       guided(p, inputs, generator=g2, **kwargs).new_tokens)


def test_per_row_parameters_as_lists_and_tensors():
    p = pair("llava")
    inputs = p.inputs((0, 1))
    base_rows, reward_rows = hf_greedy(p.base, inputs), hf_greedy(p.reward, inputs)
    for alpha in ([0.0, 1.0], torch.tensor([0.0, 1.0])):
        out = guided(p, inputs, alpha=alpha)
        assert torch.equal(out.new_tokens[0], base_rows[0])
        assert torch.equal(out.new_tokens[1], reward_rows[1])
    # do_sample with a per-row temperature: row 0 greedy (0), row 1 sampled.
    out = guided(p, inputs, alpha=0.0, do_sample=True, temperature=[0.0, 1.0], seed=1)
    assert torch.equal(out.new_tokens[0], base_rows[0])


def test_rewards_and_logprobs_match_teacher_forcing():
    """Rerun both models on the finished sequences: token reward = log p_reward - log p_base of
    each chosen token, and at alpha = 0.6 greedy the logprob is the guided log-softmax's."""
    p = pair("llama")
    inputs = p.inputs((0, 1))
    alpha = 0.6
    out = guided(p, inputs, alpha=alpha, eos_token_id=[])
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(out.new_tokens)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    width = p.reward.config.vocab_size  # the shared id range: both log-softmaxes are taken over it
    with torch.no_grad():
        logp = [torch.log_softmax(m(input_ids=out.sequences, attention_mask=mask, position_ids=positions)
                                  .logits[..., :width].float(), -1) for m in (p.base, p.reward)]
    prompt = inputs["input_ids"].shape[1]
    steps = slice(prompt - 1, prompt - 1 + NEW)
    base_lp, reward_lp = logp[0][:, steps], logp[1][:, steps]
    chosen = out.new_tokens.unsqueeze(-1)
    expected_reward = (reward_lp.gather(-1, chosen) - base_lp.gather(-1, chosen)).squeeze(-1)
    torch.testing.assert_close(out.token_rewards, expected_reward, atol=2e-4, rtol=0)
    guided_lp = torch.log_softmax(base_lp + alpha * (reward_lp - base_lp), -1).gather(-1, chosen).squeeze(-1)
    torch.testing.assert_close(out.logprobs, guided_lp, atol=2e-4, rtol=0)


def test_eos_list_stops_rows_and_pads():
    p = pair("llava")
    inputs = p.inputs((0, 1))
    free = guided(p, inputs, alpha=0.6, max_new_tokens=10, eos_token_id=[])
    # Stop row 0 at its 4th new token by declaring that token an EOS (plus an id that never occurs).
    stop_token = int(free.new_tokens[0, 3])
    first = [int((row == stop_token).nonzero()[0]) if (row == stop_token).any() else None for row in free.new_tokens]
    out = guided(p, inputs, alpha=0.6, max_new_tokens=10, eos_token_id=[tiny.VIDEO_ID, stop_token], pad_token_id=0)
    for row in range(2):
        if first[row] is None:
            assert out.finish_reason[row] == "length" and out.lengths[row] == 10
            continue
        n = first[row] + 1
        assert out.finish_reason[row] == "eos"
        assert out.lengths[row] == n
        assert torch.equal(out.new_tokens[row, :n], free.new_tokens[row, :n])
        assert (out.new_tokens[row, n:] == 0).all()
        assert (out.logprobs[row, n:] == 0).all() and (out.token_rewards[row, n:] == 0).all()
    assert out.sequences.shape[1] == inputs["input_ids"].shape[1] + out.new_tokens.shape[1]
    assert out.timings.new_tokens == int(out.lengths.sum())


def test_all_rows_stopping_ends_the_loop_early():
    p = pair("llama")
    inputs = p.inputs((0,))
    free = guided(p, inputs, alpha=0.6, max_new_tokens=10, eos_token_id=[])
    out = guided(p, inputs, alpha=0.6, max_new_tokens=10, eos_token_id=int(free.new_tokens[0, 2]))
    assert out.new_tokens.shape == (1, 3) and out.timings.steps == 3 and out.finish_reason == ["eos"]


def test_max_new_tokens_and_generation_config_defaults():
    p = pair("llama")
    inputs = p.inputs((0,))
    assert guided(p, inputs, max_new_tokens=5, eos_token_id=[]).new_tokens.shape == (1, 5)
    saved = p.base.generation_config.max_new_tokens
    try:
        p.base.generation_config.max_new_tokens = 3
        out = tita_ext.guided_generate(p.base, p.reward, inputs, eos_token_id=[])
        assert out.new_tokens.shape == (1, 3) and out.finish_reason == ["length"]
    finally:
        p.base.generation_config.max_new_tokens = saved


def test_generation_config_do_sample_is_used():
    p = pair("llama")
    inputs = p.inputs((0,))
    config = p.base.generation_config
    saved = config.do_sample, config.temperature, config.top_k
    try:
        config.do_sample, config.temperature, config.top_k = True, 1.5, 0
        a = guided(p, inputs, seed=1, max_new_tokens=12)
        b = guided(p, inputs, seed=2, max_new_tokens=12)
        greedy = guided(p, inputs, do_sample=False, max_new_tokens=12)
    finally:
        config.do_sample, config.temperature, config.top_k = saved
    assert not torch.equal(a.new_tokens, b.new_tokens)
    assert torch.equal(greedy.new_tokens, guided(p, inputs, max_new_tokens=12).new_tokens)


def test_stop_strings():
    p = pair("llava")
    tok = tokenizer()
    inputs = p.inputs((0,))
    free = guided(p, inputs, alpha=0.6, max_new_tokens=12, eos_token_id=[])
    pieces = [tok.decode(free.new_tokens[0, :k]) for k in range(1, 13)]
    # A stop string that the (n)th token completes: the last character before it plus its text,
    # for the first n >= 3 where that string is new.
    n, stop = next((n, pieces[n - 1][len(pieces[n - 2]) - 1:]) for n in range(3, 13)
                   if pieces[n - 1][len(pieces[n - 2]) - 1:] not in pieces[n - 2])
    out = guided(p, inputs, alpha=0.6, max_new_tokens=12, stop_strings=[stop, "never appears"], tokenizer=tok,
                 eos_token_id=[])
    assert out.finish_reason == ["stop_string"]
    assert out.lengths.tolist() == [n]
    assert torch.equal(out.new_tokens[0, :n], free.new_tokens[0, :n])


class RecordingStreamer:
    def __init__(self):
        self.calls = []

    def put(self, value):
        self.calls.append(("put", value.clone()))

    def end(self):
        self.calls.append(("end", None))


def test_streamer_gets_prompt_then_tokens_in_order():
    p = pair("llava")
    inputs = p.inputs((0,))
    streamer = RecordingStreamer()
    out = guided(p, inputs, alpha=0.6, streamer=streamer, eos_token_id=[])
    kinds = [k for k, _ in streamer.calls]
    assert kinds == ["put"] * (NEW + 1) + ["end"]
    assert torch.equal(streamer.calls[0][1], inputs["input_ids"])
    streamed = torch.stack([v for _, v in streamer.calls[1:-1]], dim=1)
    assert torch.equal(streamed, out.new_tokens)


def test_text_streamer_prints_the_text(capsys):
    from transformers import TextStreamer

    p = pair("llava")
    tok = tokenizer()
    out = guided(p, p.inputs((0,)), alpha=0.6, streamer=TextStreamer(tok, skip_prompt=True), tokenizer=tok)
    printed = capsys.readouterr().out
    assert printed.strip() == tok.decode(out.new_tokens[0]).strip()


def test_output_fields_and_timings():
    p = pair("qwen2_vl")
    inputs = p.inputs((0, 1))
    out = guided(p, inputs, alpha=0.6, tokenizer=tokenizer(), eos_token_id=[])
    assert out.sequences.dtype == torch.int64 and out.new_tokens.shape == (2, NEW)
    assert out.logprobs.dtype == torch.float32 and out.token_rewards.dtype == torch.float32
    assert (out.logprobs <= 0).all() and torch.isfinite(out.token_rewards).all()
    assert (out.new_tokens < len(tokenizer())).all()  # ids past the tokenizer are never chosen
    t = out.timings
    assert t.prefill_s > 0 and t.decode_s > 0 and t.steps == NEW and t.new_tokens == 2 * NEW
    assert t.tokens_per_s == pytest.approx(2 * NEW / (t.prefill_s + t.decode_s))


def test_text_only_prompt_to_a_vlm():
    p = pair("llava")
    tok = tokenizer()
    inputs = tok(["USER: hello ASSISTANT:"], return_tensors="pt")
    out = guided(p, inputs, alpha=0.0)
    assert torch.equal(out.new_tokens, hf_greedy(p.base, inputs))


def test_plausibility_keeps_tokens_the_base_finds_plausible():
    p = pair("llava")
    inputs = p.inputs((0, 1))
    out = guided(p, inputs, alpha=1.0, plausibility=1.0)  # only the base's argmax is allowed
    assert torch.equal(out.new_tokens, hf_greedy(p.base, inputs))
