"""Every setup error of guided_generate: its type and a message that says what to change."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from generate_fixtures import pair, tokenizer

import tita_ext
from tita_ext import tiny_models as tiny


def run(p, inputs, **kwargs):
    kwargs.setdefault("max_new_tokens", 3)
    return tita_ext.guided_generate(p.base, kwargs.pop("reward", p.reward), inputs, **kwargs)


def other_tokenizer(changed_id: int, new_token: str):
    """The tiny tokenizer with one vocabulary entry renamed."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads(tokenizer().backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    old = next(tok for tok, i in vocab.items() if i == changed_id)
    vocab[new_token] = vocab.pop(old)
    data["model"]["merges"] = [m for m in data["model"]["merges"]
                               if old not in (m if isinstance(m, str) else "".join(m))]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)))


def test_tokenizers_that_differ_name_the_first_differing_token():
    p = pair("llava")
    changed = 300
    old = tokenizer().convert_ids_to_tokens(changed)
    with pytest.raises(ValueError, match=rf"differ at id {changed}: base has '{old}', reward has 'zzz'"):
        run(p, p.inputs(), tokenizer=tokenizer(), reward_tokenizer=other_tokenizer(changed, "zzz"))
    tita_ext.check_tokenizers(tokenizer(), tiny.tiny_tokenizer())  # the same tokenizer passes
    with pytest.raises(ValueError, match="without tokenizer="):
        run(p, p.inputs(), reward_tokenizer=tokenizer())


def test_batch_sizes_must_match():
    p = pair("llava")
    with pytest.raises(ValueError, match="reward_inputs has 2 rows but base inputs have 3"):
        run(p, p.inputs((0, 1, 2)), reward_inputs=p.inputs((0, 1)))


def test_models_on_different_devices():
    p = pair("llama")
    reward = copy.deepcopy(p.reward).to("meta")
    with pytest.raises(ValueError, match=r"reward_model is on meta but base_model is on cpu.*reward_model.to\('cpu'\)"):
        run(p, p.inputs(), reward=reward)


def test_model_dtype_that_cannot_meet():
    p = pair("llama")
    reward = copy.deepcopy(p.reward).to(torch.float64)
    with pytest.raises(TypeError, match=r"reward_model is in torch.float64.*to\(torch.float32\)"):
        run(p, p.inputs(), reward=reward)


def test_mixed_precision_models_are_fine():
    p = pair("llama")
    reward = copy.deepcopy(p.reward).to(torch.bfloat16)
    out = run(p, p.inputs(), reward=reward, alpha=0.0, eos_token_id=[])
    assert torch.equal(out.new_tokens, run(p, p.inputs(), alpha=0.0, eos_token_id=[]).new_tokens)


def test_vlm_without_its_image_inputs():
    p = pair("llava")
    inputs = dict(p.inputs())
    del inputs["pixel_values"]
    with pytest.raises(ValueError, match="image placeholder tokens .* but no pixel_values"):
        run(p, inputs)
    q = pair("qwen2_vl")
    inputs = dict(q.inputs())
    del inputs["image_grid_thw"]
    with pytest.raises(ValueError, match="no image_grid_thw"):
        run(q, inputs)


def test_images_to_a_text_only_model():
    p = pair("llama")
    inputs = dict(p.inputs())
    inputs["pixel_values"] = torch.zeros(3, 3, 32, 32)
    with pytest.raises(ValueError, match="text-only model"):
        run(p, inputs)


def test_different_families_need_their_own_inputs():
    p, q = pair("llava"), pair("qwen2_vl")
    with pytest.raises(ValueError, match="pass reward_inputs="):
        tita_ext.guided_generate(p.base, q.reward, p.inputs(), max_new_tokens=2)
    out = tita_ext.guided_generate(p.base, q.reward, p.inputs(), reward_inputs=q.inputs(), max_new_tokens=2)
    assert out.new_tokens.shape[0] == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_max_new_tokens_below_one(bad):
    p = pair("llama")
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 1"):
        run(p, p.inputs(), max_new_tokens=bad)


def test_stop_string_without_tokenizer():
    p = pair("llama")
    with pytest.raises(ValueError, match="stop_strings need tokenizer="):
        run(p, p.inputs(), stop_strings=["cube"])
    with pytest.raises(ValueError, match="non-empty strings"):
        run(p, p.inputs(), stop_strings=[""], tokenizer=tokenizer())


def test_right_padded_prompts():
    p = pair("llama")
    tok = tiny.tiny_tokenizer()
    tok.padding_side = "right"
    inputs = tok(["a red cube", "hi"], return_tensors="pt", padding=True)
    with pytest.raises(ValueError, match="right-padded.*padding_side = 'left'"):
        run(p, inputs)


def test_bad_inputs_objects():
    p = pair("llama")
    with pytest.raises(TypeError, match="base_inputs must be the dict"):
        run(p, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids'\] must be an integer tensor \[batch, prompt_length\]"):
        run(p, {"input_ids": torch.zeros(5, dtype=torch.long)})
    with pytest.raises(TypeError, match="reward_model must be a transformers model"):
        tita_ext.guided_generate(p.base, "reward", p.inputs())


def test_sampling_parameters_out_of_range():
    p = pair("llama")
    with pytest.raises(ValueError, match="top_p must be in"):
        run(p, p.inputs(), do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match=r"temperature\[1\]: temperature must be"):
        run(p, p.inputs(), do_sample=True, temperature=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="alpha has 2 per-row values but the batch has 3 rows"):
        run(p, p.inputs(), alpha=[0.1, 0.2])
    with pytest.raises(ValueError, match="pass seed= or generator=, not both"):
        run(p, p.inputs(), seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="per-row seed must be a list of 3 ints"):
        run(p, p.inputs(), seed=[1, 2])


def test_nan_logits_name_the_row_and_step():
    p = pair("llama")
    reward = copy.deepcopy(p.reward)
    with torch.no_grad():
        reward.get_output_embeddings().weight.fill_(float("nan"))
    with pytest.raises(ValueError, match=r"failed for row 0 at new token 0: no allowed token has a finite score"):
        run(p, p.inputs(), reward=reward)
    # Streaming and stop strings see pad for the failed rows, and the same error follows.
    from transformers import TextStreamer

    with pytest.raises(ValueError, match=r"failed for row 0 at new token 0"):
        run(p, p.inputs(), reward=reward, tokenizer=tokenizer(), stop_strings=["cube"])
    with pytest.raises(ValueError, match=r"failed for row 0 at new token 0"):
        run(p, p.inputs((0,)), reward=reward, tokenizer=tokenizer(), streamer=TextStreamer(tokenizer()))


def test_ref_inputs_without_ref_model():
    p = pair("llama")
    with pytest.raises(ValueError, match="ref_inputs was given without ref_model"):
        run(p, p.inputs(), ref_inputs=p.inputs())


def test_step_sampler_refuses_unknown_parameters():
    from tita_ext.step_sampler import StepSampler

    with pytest.raises(TypeError, match="unknown sampling parameter\\(s\\): top_q"):
        StepSampler(2, torch.device("cpu"), top_q=0.5)
