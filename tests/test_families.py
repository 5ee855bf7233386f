"""Every supported transformers VLM family (plus a text-only Llama), tiny random models built in
code with their real processor outputs: two left-padded prompts of different lengths, one image
each (of different sizes where the processor keeps them). Per family:

- alpha=0 is the base model's own greedy `generate`, token for token;
- GuidedGenerator gives guided_generate's tokens, on static caches wherever the layers allow
  (asserted for every all-full-attention family), and a seeded sampling run is the same on the
  static and the dynamic engine;
- TITALogitsProcessor in greedy `generate` gives guided_generate's tokens, and with num_beams=2
  (plus num_return_sequences) gives what a processor that rebuilds the reward model's cache at
  every call gives;
- pairs across families (one tokenizer): each model reads its own processor's inputs.

Models that cannot be guided (encoder-decoder, no LM head) are refused with a clear error."""

from __future__ import annotations

import functools

import pytest
import torch
from families_tiny import FAMILIES, build, family_inputs, images
from transformers import LogitsProcessor

import tita_ext
from tita_ext.adapters import ModelRunner, model_family
from tita_ext.logits_processor import TITALogitsProcessor

NEW = 6
# Families whose every decoder layer is full attention: they must decode on static caches.
STATIC = {"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "mistral3",
          "llama"}
SAMPLING = dict(do_sample=True, temperature=1.3, top_k=50, seed=7)


@functools.lru_cache(maxsize=None)
def models(family: str):
    """(base, reward, inputs) of a family, built once."""
    return build(family, "base"), build(family, "reward"), family_inputs(family)


def _new(sequences: torch.Tensor, inputs) -> torch.Tensor:
    return sequences[:, inputs["input_ids"].shape[1]:]


def test_grid_inputs_are_batched_left_padded_with_images_of_different_sizes():
    for family in FAMILIES:
        _, _, inputs = models(family)
        mask = inputs["attention_mask"]
        assert mask.shape[0] == 2 and bool((mask[:, 0] == 0).any()), family
    # Where the processor keeps the image's shape, the two images give different token counts.
    for family in ("llava_next", "llava_onevision", "qwen2_vl", "qwen3_vl", "mistral3"):
        base, _, inputs = models(family)
        per_row = (inputs["input_ids"] == base.config.image_token_id).sum(dim=1)
        assert per_row[0] != per_row[1], family


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_is_the_base_models_greedy_generate(family):
    base, reward, inputs = models(family)
    assert model_family(base).is_vlm == (family != "llama")
    want = base.generate(**inputs, do_sample=False, max_new_tokens=NEW)  # PaliGemma's labels included
    got = tita_ext.guided_generate(base, reward, inputs, alpha=0.0, max_new_tokens=NEW, use_cuda_graph=False)
    assert torch.equal(got.sequences, want)


@pytest.mark.parametrize("family", FAMILIES)
def test_generator_matches_guided_generate_on_static_caches_where_possible(family):
    base, reward, inputs = models(family)
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=inputs["input_ids"].shape[1] + NEW)
    assert gen.static == (family in STATIC), gen.fallback_reason
    if not gen.static:
        assert gen.fallback_reason.startswith(("base_model:", "reward_model:")), gen.fallback_reason
    for kwargs in (dict(alpha=0.6), dict(alpha=0.6, **SAMPLING)):
        want = tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW, use_cuda_graph=False, **kwargs)
        got = gen.generate(inputs, max_new_tokens=NEW, **kwargs)
        assert torch.equal(got.sequences, want.sequences), kwargs
        torch.testing.assert_close(got.token_rewards, want.token_rewards, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_processor_matches_guided_generate(family):
    base, reward, inputs = models(family)
    want = tita_ext.guided_generate(base, reward, inputs, alpha=0.6, max_new_tokens=NEW, use_cuda_graph=False)
    got = base.generate(**inputs, logits_processor=[TITALogitsProcessor(reward, inputs, alpha=0.6)],
                        do_sample=False, max_new_tokens=NEW)
    assert torch.equal(_new(got, inputs), want.new_tokens)


class RebuiltGuidance(LogitsProcessor):
    """Oracle for beams: at every call, a fresh reward-model cache is prefilled and fed each row's
    own generated tokens, so no reordering is involved (any family: the runner is the engine's)."""

    def __init__(self, reward, inputs, alpha):
        self.reward, self.inputs, self.alpha = reward, inputs, alpha

    @torch.no_grad()
    def __call__(self, input_ids, scores):
        prompt = self.inputs["input_ids"].shape[1]
        runner = ModelRunner(self.reward, self.inputs, max_new_tokens=input_ids.shape[1] - prompt + 1)
        logits = runner.prefill()
        runner.repeat_rows(input_ids.shape[0] // logits.shape[0])
        logits = logits.repeat_interleave(input_ids.shape[0] // logits.shape[0], dim=0)
        for column in range(prompt, input_ids.shape[1]):
            logits = runner.step(input_ids[:, column:column + 1])
        return tita_ext.guided_logprobs(scores, logits, alpha=self.alpha)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_processor_follows_beams(family):
    base, reward, inputs = models(family)
    kwargs = dict(num_beams=2, num_return_sequences=2, do_sample=False, max_new_tokens=NEW)
    got = base.generate(**inputs, logits_processor=[TITALogitsProcessor(reward, inputs, alpha=0.6)], **kwargs)
    want = base.generate(**inputs, logits_processor=[RebuiltGuidance(reward, inputs, 0.6)], **kwargs)
    assert got.shape[0] == 4
    assert torch.equal(got, want)


# Pairs across families over one tokenizer: each model reads its own processor's inputs, with
# its own image-token count (Qwen3-VL: <|image_pad|> per merged patch; Qwen2.5-VL: <image>; the
# LLaVA-NeXT base's any-resolution tiles against LLaVA-1.5's one 32x32 view).
PAIRS = [("qwen3_vl", "qwen2_5_vl"), ("llava_next", "llava")]


@pytest.mark.parametrize("base_family, reward_family", PAIRS)
def test_pairs_across_families_read_their_own_inputs(base_family, reward_family):
    base, _, inputs = models(base_family)
    _, reward, reward_inputs = models(reward_family)
    image_tokens = [(x["input_ids"] == m.config.image_token_id).sum(dim=1).tolist()
                    for x, m in ((inputs, base), (reward_inputs, reward))]
    assert image_tokens[0] != image_tokens[1]
    with pytest.raises(ValueError, match="their processors differ, so pass reward_inputs="):
        tita_ext.guided_generate(base, reward, inputs, max_new_tokens=NEW)
    kwargs = dict(reward_inputs=reward_inputs, alpha=0.6, max_new_tokens=NEW)
    want = tita_ext.guided_generate(base, reward, inputs, use_cuda_graph=False, **kwargs)
    assert not torch.equal(want.new_tokens, tita_ext.guided_generate(
        base, reward, inputs, use_cuda_graph=False, **dict(kwargs, alpha=0.0)).new_tokens)  # guidance acts
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=96)
    assert gen.static
    assert torch.equal(gen.generate(inputs, **kwargs).sequences, want.sequences)
    got = base.generate(**inputs, logits_processor=[TITALogitsProcessor(reward, reward_inputs, alpha=0.6)],
                        do_sample=False, max_new_tokens=NEW)
    assert torch.equal(_new(got, inputs), want.new_tokens)


def test_static_sliding_window_layers_whose_window_holds_the_cache():
    """Gemma3's sliding layers (window 4 in the grid) decode on static caches once the window
    holds every position; a shorter window is refused with the reason."""
    from families_tiny import build_with

    base = build_with("gemma3", "base", sliding_window=64)
    reward = build_with("gemma3", "reward", sliding_window=64)
    _, _, inputs = models("gemma3")
    gen = tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=64)
    assert gen.static, gen.fallback_reason
    want = tita_ext.guided_generate(base, reward, inputs, alpha=0.6, max_new_tokens=NEW, use_cuda_graph=False)
    assert torch.equal(gen.generate(inputs, alpha=0.6, max_new_tokens=NEW).sequences, want.sequences)
    short = tita_ext.GuidedGenerator(base, reward, max_batch_size=2, max_length=65)
    assert not short.static
    assert "sliding-window layers (StaticSlidingWindowLayer) of 64 positions, fewer than max_length=65" in \
        short.fallback_reason


def test_models_that_cannot_be_guided_are_refused_by_name():
    from transformers import LlamaModel, T5Config, T5ForConditionalGeneration

    base, _, inputs = models("llama")
    byt5 = T5ForConditionalGeneration(T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32, num_layers=1,
                                               num_heads=2, decoder_start_token_id=0))
    match = r"reward_model \(T5ForConditionalGeneration, model_type 't5'\) is an encoder-decoder model"
    with pytest.raises(ValueError, match=match):
        tita_ext.guided_generate(base, byt5, inputs)
    with pytest.raises(ValueError, match=match):
        TITALogitsProcessor(byt5, inputs)
    headless = LlamaModel(base.config)
    with pytest.raises(ValueError, match=r"base_model \(LlamaModel, model_type 'llama'\) has no language-model head"):
        tita_ext.GuidedGenerator(headless, base, max_batch_size=1, max_length=16)


def test_image_inputs_are_checked_by_what_the_model_takes():
    base, reward, inputs = models("qwen3_vl")
    partial = {k: v for k, v in inputs.items() if k != "image_grid_thw"}
    with pytest.raises(ValueError, match=r"no image_grid_thw, which base_model \(Qwen3VLForConditionalGeneration, "
                                         r"family 'qwen3_vl'\) needs with its images"):
        tita_ext.guided_generate(base, reward, partial)
    llama, _, _ = models("llama")
    with pytest.raises(ValueError, match=r"carries pixel_values but reward_model \(LlamaForCausalLM, family 'llama'\) "
                                         "is a text-only model"):
        tita_ext.guided_generate(base, llama, inputs, reward_inputs=inputs)
    blind = build("llava", "reward")
    blind.config.image_token_id = None  # a VLM whose config does not say where images go
    _, _, llava_inputs = models("llava")
    with pytest.raises(ValueError, match="names no image placeholder token"):
        tita_ext.guided_generate(blind, blind, llava_inputs)


@pytest.mark.parametrize("family", ["qwen3_vl", "internvl", "gemma3", "idefics3"])
def test_cli_generate_takes_the_family(family, tmp_path, capsys):
    """`tita-ext generate` on saved folders (Qwen3-VL's and InternVL's processors rebuilt without
    their video processors, as without torchvision), with an image."""
    import transformers
    from families_tiny import save_folder

    from tita_ext.cli import main

    if tuple(map(int, transformers.__version__.split(".")[:2])) < (5, 18):
        pytest.skip("transformers 5.17's AutoImageProcessor loads these families' PIL image processors only "
                    "with torchvision installed")

    for role in ("base", "reward"):
        save_folder(family, role, tmp_path / role)
    images()[1].save(tmp_path / "image.png")
    code = main(["generate", "--base", str(tmp_path / "base"), "--reward", str(tmp_path / "reward"), "--image",
                 str(tmp_path / "image.png"), "--prompt", "What is in the picture?", "--max-new-tokens", "3",
                 "--show-rewards"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "new tokens, mean reward" in captured.out


def test_cache_keyword_is_found_by_its_annotation():
    from transformers.cache_utils import Cache

    from tita_ext.adapters import cache_argument

    class Renamed(torch.nn.Module):
        def forward(self, input_ids, kv_state: Cache | None = None, use_cache: bool | None = None): ...

    class Unannotated(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None): ...

    class NoCache(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None): ...

    assert cache_argument(Renamed) == "kv_state"
    assert cache_argument(Unannotated) == "past_key_values"
    assert cache_argument(NoCache) is None
    import transformers
    expected = "cache" if tuple(map(int, transformers.__version__.split(".")[:2])) >= (5, 24) else "past_key_values"
    assert cache_argument(type(models("llama")[0])) == expected
