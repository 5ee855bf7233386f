"""The engine's own input checks (issue 15.7): each case fails before any model runs with an error
that says what was wrong and what to do; alpha=0 runs the base alone (a broken reward model
cannot fail it); a NaN from a model names that model."""

from __future__ import annotations

import copy

import pytest
import torch
from generate_fixtures import pair, tokenizer

import tita_ext


def no_forward(model):
    """A deep copy of `model` whose forward raises: errors must come before any model runs."""
    model = copy.deepcopy(model)

    def forward(*args, **kwargs):
        raise AssertionError("a model ran before the input checks")

    model.forward = forward
    return model


def run(p, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", 3)
    base = kwargs.pop("base", p.base)
    return tita_ext.guided_generate(base, kwargs.pop("reward", p.reward), inputs, **kwargs)


def test_reward_narrower_than_the_prompt_ids():
    p = pair("llama")  # reward: 448 embeddings, base 512
    inputs = dict(p.inputs())
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][0, -1] = 470
    with pytest.raises(ValueError, match=r"reward_inputs holds token id 470 but reward_model \(LlamaForCausalLM\) "
                                         r"reads ids 0\.\.447.*reward_tokenizer="):
        run(p, inputs, base=no_forward(p.base), reward=no_forward(p.reward))


def test_models_with_different_special_tokens_need_reward_tokenizer():
    p = pair("llama")
    reward = no_forward(p.reward)
    reward.config.eos_token_id = 7
    reward.generation_config.eos_token_id = 7
    with pytest.raises(ValueError, match=r"different eos_token_ids \(\[2\] vs \[7\]\).*reward_tokenizer="):
        run(p, p.inputs(), base=no_forward(p.base), reward=reward)
    reward.config.bos_token_id = 9
    with pytest.raises(ValueError, match=r"different bos_token_ids \(\[1\] vs \[9\]\)"):
        run(p, p.inputs(), base=no_forward(p.base), reward=reward)
    # The tokenizers compared id by id are the stronger evidence: then the configs are not consulted.
    reward = copy.deepcopy(p.reward)
    reward.config.eos_token_id = 7
    out = run(p, p.inputs(), reward=reward, tokenizer=tokenizer(), reward_tokenizer=tokenizer())
    assert out.new_tokens.shape[0] == 3


def test_tokenizer_that_did_not_make_the_inputs():
    p = pair("llama")
    inputs = dict(p.inputs())
    inputs["input_ids"] = inputs["input_ids"].clone()
    inputs["input_ids"][1, -1] = 400  # within both models' embeddings, beyond the 381-token tokenizer
    with pytest.raises(ValueError, match=r"base_inputs holds token id 400 but tokenizer= has only 381 tokens"):
        run(p, inputs, tokenizer=tokenizer(), base=no_forward(p.base), reward=no_forward(p.reward))


@pytest.mark.parametrize("family", ["llava", "llama"])
def test_batch_of_zero(family):
    p = pair(family)
    empty = {key: value[:0] if isinstance(value, torch.Tensor) else value for key, value in p.inputs().items()}
    with pytest.raises(ValueError, match=r"base_inputs has no rows \(a batch of 0 prompts\)"):
        run(p, empty, base=no_forward(p.base), reward=no_forward(p.reward))


def nan_reward(p):
    reward = copy.deepcopy(p.reward)
    with torch.no_grad():
        reward.get_output_embeddings().weight.fill_(float("nan"))
    return reward


def test_nan_logits_name_the_model():
    p = pair("llava")
    with pytest.raises(ValueError, match=r"failed for row 0 at new token 0: no allowed token has a finite score .*\. "
                                         r"reward_model's logits there are NaN or inf"):
        run(p, p.inputs(), reward=nan_reward(p))
    base = copy.deepcopy(p.base)
    with torch.no_grad():
        base.get_output_embeddings().weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"base_model's logits there are NaN or inf"):
        run(p, p.inputs(), base=base, alpha=0.0)


def test_alpha_zero_runs_the_base_alone():
    """alpha 0 for every row: the reward model takes no part (its NaN cannot fail the call); the
    tokens are the base's greedy ones and token rewards are 0. A per-row alpha of 0 beside other
    values meets the reward's logits in the op (0 * NaN is NaN): that row fails, naming the model."""
    p = pair("llava")
    inputs = p.inputs()
    want = p.base.generate(**inputs, max_new_tokens=4, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    for alpha in (0.0, 0, [0.0, 0.0, 0.0]):
        out = run(p, inputs, reward=nan_reward(p), alpha=alpha, max_new_tokens=4)
        assert torch.equal(out.new_tokens, want)
        assert out.token_rewards.abs().max() == 0
    with pytest.raises(ValueError, match=r"failed for row 0 .* reward_model's logits"):
        run(p, inputs, reward=nan_reward(p), alpha=[0.0, 0.5, 0.0])


@pytest.mark.parametrize("alpha", [-1.0, 1e9, [0.5, 11.0, 0.5], torch.tensor([0.5, -0.1, 0.5])])
def test_alpha_outside_its_useful_range(alpha):
    p = pair("llama")
    with pytest.raises(ValueError, match=r"alpha=.* is outside \[0, 10\]: alpha weighs the reward model"):
        run(p, p.inputs(), alpha=alpha, base=no_forward(p.base), reward=no_forward(p.reward))


def test_do_sample_must_be_a_bool():
    p = pair("llama")
    with pytest.raises(TypeError, match=r"do_sample must be True, False or None .* got 'yes'"):
        run(p, p.inputs(), do_sample="yes", base=no_forward(p.base), reward=no_forward(p.reward))


def test_sampling_parameters_with_greedy_decoding_warn_like_generate():
    p = pair("llama")
    greedy = run(p, p.inputs())
    with pytest.warns(UserWarning, match=r"greedy decoding \(do_sample is off\): temperature, top_p are ignored"):
        out = run(p, p.inputs(), do_sample=False, top_p=0.5, temperature=0.3)
    assert torch.equal(out.new_tokens, greedy.new_tokens)
    # do_sample unset and off in the generation config: the same warning, as generate gives.
    with pytest.warns(UserWarning, match="top_k is ignored"):
        run(p, p.inputs(), top_k=3)


def test_streamer_that_is_not_one():
    p = pair("llama")
    with pytest.raises(TypeError, match=r"streamer must be a transformers streamer .* got builtin_function_or_method"):
        run(p, p.inputs(), streamer=print, base=no_forward(p.base), reward=no_forward(p.reward))
    from transformers import TextStreamer

    with pytest.raises(TypeError, match=r"one streamer .* per row: 3 rows, got 2 entries"):
        run(p, p.inputs(), streamer=[TextStreamer(tokenizer())] * 2, base=no_forward(p.base),
            reward=no_forward(p.reward))
    with pytest.raises(ValueError, match=r"TextStreamer streams one row but the batch has 3: pass a list of 3"):
        run(p, p.inputs(), streamer=TextStreamer(tokenizer()), base=no_forward(p.base), reward=no_forward(p.reward))
    with pytest.raises(TypeError, match=r"entry 1 is a function"):
        run(p, p.inputs(), streamer=[TextStreamer(tokenizer()), lambda t: t, TextStreamer(tokenizer())],
            base=no_forward(p.base), reward=no_forward(p.reward))


@pytest.mark.parametrize("kwargs, message", [
    (dict(repetition_penalty=0.0), r"repetition_penalty must be a number > 0"),
    (dict(repetition_penalty=float("nan")), r"repetition_penalty must be a number > 0"),
    (dict(repetition_penalty=[1.1, 1.2, 1.3]), r"repetition_penalty must be a number > 0 .* one value for the batch"),
    (dict(min_new_tokens=-1), r"min_new_tokens must be an int >= 0, got -1"),
    (dict(num_return_sequences=0), r"num_return_sequences must be an int >= 1, got 0"),
    (dict(num_return_sequences=2), r"num_return_sequences=2 with greedy decoding .* do_sample=True"),
    (dict(num_return_sequences=2, do_sample=True, seed=[1, 2, 3]),
     r"one seed per returned sequence \(3 prompts x 2 = 6"),
])
def test_generate_feature_arguments(kwargs, message):
    p = pair("llama")
    with pytest.raises(ValueError, match=message):
        run(p, p.inputs(), base=no_forward(p.base), reward=no_forward(p.reward), **kwargs)


def test_generator_checks_the_same():
    p = pair("llama")
    gen = tita_ext.GuidedGenerator(p.base, p.reward, max_batch_size=4, max_length=32)
    with pytest.raises(ValueError, match="is outside"):
        gen.generate(p.inputs(), alpha=-1.0)
    with pytest.raises(TypeError, match="streamer must be"):
        gen.generate(p.inputs(), streamer=print)
    assert gen.calls == 0
