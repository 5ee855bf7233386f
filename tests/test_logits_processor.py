"""TITALogitsProcessor inside `base_model.generate`: the same tokens as `guided_generate` for
greedy decoding, its caches following beams and expanded rows, reuse across calls, clear errors.

The oracle for beam search and multi-sequence sampling is a processor that runs the reward model
on the whole sequence at every call (no cache), so a reordering mistake cannot hide."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor

import tita_ext
from tita_ext.logits_processor import TITALogitsProcessor
from tita_ext.tiny_models import (demo_image, qwen2_vl_inputs, tiny_llama, tiny_llava, tiny_llava_processor,
                                  tiny_qwen2_vl, tiny_tokenizer)

# Unequal lengths: every batch below is left-padded.
TEXTS = ["What is in the picture?", "Is there a red cube on a table?", "There is a"]
REWARD_WIDTH = 448  # narrower than the base's 512 logits: the shared range is tested too
# Large enough weights that the reward model's logits depend on its context: a cache that
# followed the wrong beam changes the tokens (at the default 0.02 they are nearly flat).
REWARD_STD = 0.3


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    base = tiny_llama(seed=0)
    reward = tiny_llama(seed=1, hidden_size=32, layers=1, vocab_width=REWARD_WIDTH, init_std=REWARD_STD)
    enc = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return base, reward, enc


@pytest.fixture(scope="module")
def llava(tokenizer):
    base = tiny_llava(seed=0)
    reward = tiny_llava(seed=1, hidden_size=32, layers=1, vocab_width=REWARD_WIDTH, init_std=REWARD_STD)
    prompts = [f"USER: <image>\n{text} ASSISTANT:" for text in TEXTS]
    images = [demo_image(color) for color in ("red", "green", "blue")]
    enc = tiny_llava_processor(tokenizer)(images=images, text=prompts, return_tensors="pt", padding=True)
    return base, reward, enc


@pytest.fixture(scope="module")
def qwen2_vl(tokenizer):
    base = tiny_qwen2_vl(seed=0)
    reward = tiny_qwen2_vl(seed=1, layers=1, vocab_width=REWARD_WIDTH, init_std=REWARD_STD)
    prompts = [f"<image>{text}" for text in TEXTS]
    enc = qwen2_vl_inputs(tokenizer, prompts, [demo_image(color) for color in ("red", "green", "blue")])
    return base, reward, enc


def _new(sequences: torch.Tensor, enc) -> torch.Tensor:
    return sequences[:, enc["input_ids"].shape[1]:]


@pytest.mark.parametrize("pair", ["llama", "llava", "qwen2_vl"])
def test_greedy_matches_guided_generate(pair, request):
    base, reward, enc = request.getfixturevalue(pair)
    assert (enc["attention_mask"] == 0).any()  # left padding is exercised
    want = tita_ext.guided_generate(base, reward, enc, alpha=0.6, max_new_tokens=8)
    got = base.generate(**enc, logits_processor=[TITALogitsProcessor(reward, enc, alpha=0.6)],
                        do_sample=False, max_new_tokens=8)
    # Both stop rows at the configured EOS and pad after it, so the whole new part must agree.
    assert torch.equal(_new(got, enc), want.new_tokens)
    plain = base.generate(**enc, do_sample=False, max_new_tokens=8)
    assert not torch.equal(_new(plain, enc), want.new_tokens)  # the guidance did change the text


def test_reference_equal_to_reward_gives_the_base_model(llava):
    base, reward, enc = llava
    plain = base.generate(**enc, do_sample=False, max_new_tokens=8)
    guided = base.generate(**enc, do_sample=False, max_new_tokens=8,
                           logits_processor=[TITALogitsProcessor(reward, enc, alpha=0.6, ref_model=reward)])
    assert torch.equal(guided, plain)


def test_alpha_zero_beam_search_is_plain_beam_search(llava):
    base, reward, enc = llava
    plain = base.generate(**enc, num_beams=3, do_sample=False, max_new_tokens=8)
    guided = base.generate(**enc, num_beams=3, do_sample=False, max_new_tokens=8,
                           logits_processor=[TITALogitsProcessor(reward, enc, alpha=0.0)])
    assert torch.equal(guided, plain)


class UncachedGuidance(LogitsProcessor):
    """Oracle: every call runs the reward model on prompt + generated tokens from scratch.

    `images`: the image inputs already expanded to generate's rows. Positions as generate gives
    them: the cumulative attention mask, or Qwen2-VL's own multimodal positions."""

    def __init__(self, reward, enc, alpha, images=None):
        self.reward, self.enc, self.alpha, self.images = reward, enc, alpha, images or {}

    @torch.no_grad()
    def __call__(self, input_ids, scores):
        prompt_mask = self.enc["attention_mask"]
        rows, new = input_ids.shape[0], input_ids.shape[1] - prompt_mask.shape[1]
        repeats = rows // prompt_mask.shape[0]
        grown = torch.zeros(rows, new, dtype=prompt_mask.dtype)
        mask = torch.cat([prompt_mask.repeat_interleave(repeats, dim=0), grown + 1], dim=1)
        kwargs = dict(self.images)
        if "mm_token_type_ids" in self.enc:
            types = self.enc["mm_token_type_ids"].repeat_interleave(repeats, dim=0)
            kwargs["mm_token_type_ids"] = torch.cat([types, grown.to(types.dtype)], dim=1)
        else:
            kwargs["position_ids"] = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.reward(input_ids=input_ids, attention_mask=mask, **kwargs).logits[:, -1]
        return tita_ext.guided_logprobs(scores, logits, alpha=self.alpha)


def _one_qwen2_vl_prompt(repeats):
    """The first prompt of a Qwen2-VL batch, and its image inputs repeated for `repeats` rows."""
    one = qwen2_vl_inputs(tiny_tokenizer(), [f"<image>{TEXTS[0]}"], [demo_image("red")])
    return one, {"pixel_values": one["pixel_values"].repeat(repeats, 1),
                 "image_grid_thw": one["image_grid_thw"].repeat(repeats, 1)}


@pytest.mark.parametrize("pair", ["llama", "llava", "qwen2_vl"])
def test_beam_search_follows_the_beams(pair, request):
    base, reward, enc = request.getfixturevalue(pair)
    kwargs = dict(num_beams=3, num_return_sequences=2, do_sample=False, max_new_tokens=8)
    images = {}
    if pair == "llava":
        images = {"pixel_values": enc["pixel_values"].repeat_interleave(3, dim=0)}
    elif pair == "qwen2_vl":  # its patches are flattened over the batch: one prompt keeps the oracle simple
        enc, images = _one_qwen2_vl_prompt(3)
    want = base.generate(**enc, logits_processor=[UncachedGuidance(reward, enc, 0.6, images)], **kwargs)
    got = base.generate(**enc, logits_processor=[TITALogitsProcessor(reward, enc, alpha=0.6)], **kwargs)
    assert torch.equal(got, want)
    new = _new(got, enc)
    assert new.shape[0] == 2 * enc["input_ids"].shape[0]
    assert bool((new < REWARD_WIDTH).all())  # never outside the reward model's ids
    assert not torch.equal(got, base.generate(**enc, **kwargs))


def _sample(base, enc, processor, seed, **kwargs):
    torch.manual_seed(seed)
    return base.generate(**enc, logits_processor=[processor], do_sample=True, max_new_tokens=8, top_k=0,
                         **kwargs)


def test_sampling_with_expanded_rows_matches_the_oracle(llama):
    base, reward, enc = llama
    want = _sample(base, enc, UncachedGuidance(reward, enc, 0.6), 0, num_return_sequences=2)
    got = _sample(base, enc, TITALogitsProcessor(reward, enc, alpha=0.6), 0, num_return_sequences=2)
    assert torch.equal(got, want)
    assert bool((_new(got, enc) < REWARD_WIDTH).all())


def test_one_processor_serves_consecutive_generate_calls(llava):
    base, reward, enc = llava
    shared = TITALogitsProcessor(reward, enc, alpha=0.6)
    first = _sample(base, enc, shared, 0)
    second = _sample(base, enc, shared, 1)
    assert torch.equal(first, _sample(base, enc, TITALogitsProcessor(reward, enc, alpha=0.6), 0))
    assert torch.equal(second, _sample(base, enc, TITALogitsProcessor(reward, enc, alpha=0.6), 1))
    assert not torch.equal(first, second)
    # then greedy beam search with the same object
    beams = base.generate(**enc, num_beams=2, do_sample=False, max_new_tokens=4, logits_processor=[shared])
    fresh = base.generate(**enc, num_beams=2, do_sample=False, max_new_tokens=4,
                          logits_processor=[TITALogitsProcessor(reward, enc, alpha=0.6)])
    assert torch.equal(beams, fresh)


def test_mask_buffer_grows_past_max_new_tokens(llama):
    base, reward, enc = llama
    small = TITALogitsProcessor(reward, enc, alpha=0.6, max_new_tokens=2)
    got = base.generate(**enc, logits_processor=[small], do_sample=False, max_new_tokens=7)
    want = tita_ext.guided_generate(base, reward, enc, alpha=0.6, max_new_tokens=7)
    assert torch.equal(_new(got, enc), want.new_tokens)


def test_per_prompt_alpha(llama):
    base, reward, enc = llama
    alphas = [0.0, 0.6, 1.0]
    want = tita_ext.guided_generate(base, reward, enc, alpha=alphas, max_new_tokens=6)
    got = base.generate(**enc, logits_processor=[TITALogitsProcessor(reward, enc, alpha=alphas)],
                        do_sample=False, max_new_tokens=6)
    assert torch.equal(_new(got, enc), want.new_tokens)
    # with beams, each prompt's alpha goes to all of its rows
    beams = dict(num_beams=3, do_sample=False, max_new_tokens=6)
    per_row = torch.tensor(alphas).repeat_interleave(3)
    want = base.generate(**enc, logits_processor=[UncachedGuidance(reward, enc, per_row)], **beams)
    got = base.generate(**enc, logits_processor=[TITALogitsProcessor(reward, enc, alpha=alphas)], **beams)
    assert torch.equal(got, want)


def test_reward_inputs_for_other_prompts_are_refused(llama, tokenizer):
    base, reward, enc = llama
    two = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="reward_inputs has 2 prompt"):
        base.generate(**enc, logits_processor=[TITALogitsProcessor(reward, two)], max_new_tokens=2)
    # 1 prompt for 2 rows would pass for a num_beams=2 expansion, but these rows are different prompts
    one = tokenizer(TEXTS[:1], return_tensors="pt", padding=True)
    pair = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="reward_inputs has 1 prompt"):
        base.generate(**pair, logits_processor=[TITALogitsProcessor(reward, one)], max_new_tokens=2)


def test_bad_arguments_are_refused_at_construction(llama):
    _, reward, enc = llama
    with pytest.raises(ValueError, match="ref_inputs was given without ref_model"):
        TITALogitsProcessor(reward, enc, ref_inputs=enc)
    with pytest.raises(ValueError, match="alpha"):
        TITALogitsProcessor(reward, enc, alpha=float("nan"))
    with pytest.raises(ValueError, match="alpha has 2 per-row values"):
        TITALogitsProcessor(reward, enc, alpha=[0.1, 0.2])
    with pytest.raises(ValueError, match="right-padded"):
        right = dict(enc, attention_mask=enc["attention_mask"].flip(1))
        TITALogitsProcessor(reward, right)


def test_more_bad_arguments(llama, llava):
    import copy

    _, reward, enc = llama
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1, got 0"):
        TITALogitsProcessor(reward, enc, max_new_tokens=0)
    elsewhere = copy.deepcopy(reward).to("meta")
    with pytest.raises(ValueError, match=r"ref_model is on meta but reward_model is on cpu.*ref_model.to\('cpu'\)"):
        TITALogitsProcessor(reward, enc, ref_model=elsewhere)
    _, llava_reward, _ = llava
    with pytest.raises(ValueError, match="ref_model is LlavaForConditionalGeneration but reward_model is "
                                         "LlamaForCausalLM: their processors differ, so pass ref_inputs="):
        TITALogitsProcessor(reward, enc, ref_model=llava_reward)
    processor = TITALogitsProcessor(reward, enc)
    scores = torch.zeros(enc["input_ids"].shape[0], 8, device="meta")
    with pytest.raises(ValueError, match="generate's scores are on meta but reward_model is on cpu"):
        processor(enc["input_ids"], scores)
