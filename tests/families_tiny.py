"""Tiny random models of every supported transformers VLM family, built in code (no download),
with their real processors (PIL image processors: no torchvision) where one can be built offline.

Every family reads the same ids (`family_tokenizer`: the tiny BPE tokenizer plus each family's
image tokens; only the attribute names a family's processor reads differ), so models of
different families can be paired (a Qwen3-VL base with a Qwen2.5-VL reward). PaliGemma's
processor adds 1152 location/segment tokens to its tokenizer: it gets its own wider vocabulary.

    base = build("gemma3", "base")        # hidden 64, 2 layers, 512 logits
    reward = build("gemma3", "reward")    # hidden 32, 1 layer, 448 logits
    inputs = family_inputs("gemma3", ["Is there a cube?", "What is in the picture?"], images())
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from tita_ext import tiny_models as tiny
from tita_ext.prompt_inputs import images_only_processor

FAMILIES = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "internvl",
            "gemma3", "idefics3", "smolvlm", "mistral3", "paligemma", "llama")
# The reward model's larger weights make its logits depend on its context (at 0.02 they are
# nearly flat), so a cache that followed the wrong row or beam changes the tokens.
SIZES = {"base": dict(hidden_size=64, layers=2, vocab_width=512, seed=0, init_std=0.02),
         "reward": dict(hidden_size=32, layers=1, vocab_width=448, seed=1, init_std=0.3)}
PALIGEMMA_WIDTH = {"base": 1600, "reward": 1560}  # its tokenizer grows to about 1550 ids
IMAGE, PATCH = 32, 8  # vision towers: 32x32 inputs (processors resize to it), 8-pixel patches
PROMPTS = ("Is there a red cube on a table?", "What is in the picture?")

_IDEFICS_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
_EXTRA_TOKENS = ["<|image_pad|>", "<|video_pad|>", "<start_of_image>", "<end_of_image>", "<image_soft_token>",
                 "<img>", "</img>", "<IMG_CONTEXT>", "[IMG]", "[IMG_BREAK]", "[IMG_END]"] + _IDEFICS_TOKENS
# The special-token attributes each family's processor reads (beyond the tiny tokenizer's own).
_NAMED = {
    "qwen3_vl": {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    "gemma3": {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"},
    "internvl": {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                 "video_token": "<|video|>"},
    "mistral3": {"image_token": "[IMG]"},
}
_NAMED["qwen3_5"] = _NAMED["qwen3_vl"]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tiny._trained_tokenizer_json())
    tokenizer.add_special_tokens(_EXTRA_TOKENS)
    return tokenizer.to_str()


def family_tokenizer(family: str = "llava"):
    """The shared tokenizer (left padding) with the special-token attributes `family`'s processor reads."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    named = {"image_token": "<image>", "vision_start_token": "<|vision_start|>",
             "vision_end_token": "<|vision_end|>", "video_token": "<|video|>"}
    named.update(_NAMED.get(family, {}))
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tokenizer_json()), unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", pad_token="<pad>", extra_special_tokens=named,
                                   padding_side="left")


def token_id(token: str) -> int:
    return family_tokenizer().convert_tokens_to_ids(token)


def _text(hidden_size: int, layers: int, vocab_width: int, model_type: str = "llama", init_std: float = 0.02,
          **extra) -> dict:
    config = dict(model_type=model_type, vocab_size=vocab_width, hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=hidden_size // 4, max_position_embeddings=1024,
                  initializer_range=init_std, bos_token_id=tiny.BOS_ID, eos_token_id=tiny.EOS_ID,
                  pad_token_id=tiny.PAD_ID, tie_word_embeddings=False)
    config.update(extra)
    return config


def _vision(model_type: str, **extra) -> dict:
    config = dict(model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=IMAGE, patch_size=PATCH)
    config.update(extra)
    return config


def _mrope(hidden_size: int) -> dict:
    head_dim = hidden_size // 4
    quarter = head_dim // 4
    sections = [head_dim // 2 - 2 * quarter, quarter, quarter]
    return dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections,
                                  "mrope_interleaved": True})


def _config(family: str, hidden_size: int, layers: int, vocab_width: int, init_std: float):
    import transformers as tf

    def text_config(model_type: str = "llama", **extra) -> dict:
        return _text(hidden_size, layers, vocab_width, model_type, init_std, **extra)

    text = text_config()
    image_id = tiny.IMAGE_ID
    if family == "llava_next":
        return tf.LlavaNextConfig(vision_config=_vision("clip_vision_model", projection_dim=32), text_config=text,
                                  image_token_index=image_id, image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]],
                                  vision_feature_layer=-1, vision_feature_select_strategy="default")
    if family == "llava_onevision":
        return tf.LlavaOnevisionConfig(vision_config=_vision("siglip_vision_model"),
                                       text_config=text_config("qwen2"),
                                       image_token_index=image_id, video_token_index=tiny.VIDEO_ID,
                                       image_grid_pinpoints=[[32, 32], [32, 64], [64, 32]], vision_feature_layer=-1,
                                       vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9")
    if family in ("qwen3_vl", "qwen3_5"):
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=PATCH,
                      spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=hidden_size,
                      num_position_embeddings=16, deepstack_visual_indexes=[0] if family == "qwen3_vl" else [])
        ids = dict(image_token_id=token_id("<|image_pad|>"), video_token_id=token_id("<|video_pad|>"),
                   vision_start_token_id=tiny.VISION_START_ID, vision_end_token_id=tiny.VISION_END_ID)
        if family == "qwen3_vl":
            text = text_config("qwen3_vl_text", **_mrope(hidden_size))
            return tf.Qwen3VLConfig(text_config=text, vision_config=vision, **ids)
        # Qwen3.5 interleaves linear-attention (gated delta rule) and full-attention layers: both kinds.
        text = text_config("qwen3_5_text", **_mrope(hidden_size), layer_types=["linear_attention", "full_attention"],
                           linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                           linear_num_value_heads=4)
        text["num_hidden_layers"] = 2
        return tf.Qwen3_5Config(text_config=text, vision_config=vision, **ids)
    if family == "internvl":
        vision = _vision("internvl_vision", use_mean_pooling=False)
        return tf.InternVLConfig(vision_config=vision, text_config=text_config("qwen2"),
                                 image_token_id=token_id("<IMG_CONTEXT>"), image_seq_length=4,
                                 downsample_ratio=0.5, vision_feature_layer=-1,
                                 vision_feature_select_strategy="default")
    if family == "gemma3":
        # A sliding layer (window 4: shorter than the prompts) and a full-attention layer.
        text = text_config("gemma3_text", sliding_window=4, layer_types=["sliding_attention", "full_attention"])
        text["num_hidden_layers"] = 2
        return tf.Gemma3Config(text_config=text, vision_config=_vision("siglip_vision_model"), mm_tokens_per_image=4,
                               boi_token_index=token_id("<start_of_image>"), eoi_token_index=token_id("<end_of_image>"),
                               image_token_index=token_id("<image_soft_token>"))
    if family in ("idefics3", "smolvlm"):
        vision = _vision(f"{family}_vision")
        make = tf.Idefics3Config if family == "idefics3" else tf.SmolVLMConfig
        return make(vision_config=vision, text_config=text, image_token_id=image_id, scale_factor=2)
    if family == "mistral3":
        vision = _vision("pixtral", head_dim=16)
        return tf.Mistral3Config(vision_config=vision, text_config=text_config("mistral"),
                                 image_token_index=token_id("[IMG]"), spatial_merge_size=2, vision_feature_layer=-1)
    if family == "paligemma":
        vision = _vision("siglip_vision_model", projection_dim=hidden_size)
        text = text_config("gemma")
        return tf.PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                                  projection_dim=hidden_size, hidden_size=hidden_size)
    raise ValueError(f"no tiny config for {family!r}")


def build(family: str, role: str = "base") -> torch.nn.Module:
    """A tiny random `family` model: role "base" (hidden 64, 2 layers) or "reward" (hidden 32,
    1 layer, narrower logits). Same family and role: same weights."""
    return build_with(family, role)


def build_with(family: str, role: str = "base", **text_changes) -> torch.nn.Module:
    """build(family, role) with some text-config values changed (e.g. sliding_window=64)."""
    import transformers as tf

    size = dict(SIZES[role])
    if family == "paligemma":
        size["vocab_width"] = PALIGEMMA_WIDTH[role]
    if family == "llama":
        return tiny.tiny_llama(**size)
    if family == "llava":
        return tiny.tiny_llava(**size)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return tiny.tiny_qwen2_vl(version="2" if family == "qwen2_vl" else "2.5", **size)
    seed = size.pop("seed")
    config = _config(family, **size)
    config.initializer_range = size["init_std"]
    for key, value in text_changes.items():
        setattr(config.get_text_config(), key, value)
    auto = tf.AutoModelForImageTextToText._model_mapping[type(config)]
    return tiny._build(lambda: auto(config), seed, real_ids=len(tokenizer_for(family)))


def tokenizer_for(family: str):
    """`family`'s tokenizer: its processor's (PaliGemma's has grown), else family_tokenizer(family)."""
    return processor(family).tokenizer if family == "paligemma" else family_tokenizer(family)


def images(sizes: Sequence[tuple[int, int]] = ((40, 40), (56, 24))) -> list:
    """One RGB image per prompt, of the given (width, height): different sizes (and so different
    image-token counts) where a family's processor keeps them."""
    from PIL import Image

    colors = ((220, 30, 30), (30, 60, 220), (30, 180, 60))
    return [Image.new("RGB", size, colors[i % len(colors)]) for i, size in enumerate(sizes)]


_GRID = [[32, 32], [32, 64], [64, 32]]
_QWEN_PIXELS = dict(min_pixels=IMAGE * IMAGE // 4, max_pixels=IMAGE * IMAGE, patch_size=PATCH, merge_size=2,
                    temporal_patch_size=2)


@functools.lru_cache(maxsize=None)
def processor(family: str):
    """`family`'s real processor over the shared tokenizer (None for llama and Qwen2-VL/2.5-VL,
    whose inputs tiny_models.qwen2_vl_inputs builds the same way without the video processor)."""
    import transformers as tf

    tokenizer = family_tokenizer(family)
    square = {"height": IMAGE, "width": IMAGE}
    if family == "llava":
        return tiny.tiny_llava_processor(tokenizer)
    if family == "llava_next":
        from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

        pixels = LlavaNextImageProcessorPil(size={"shortest_edge": IMAGE}, crop_size=square, image_grid_pinpoints=_GRID)
        return tf.LlavaNextProcessor(image_processor=pixels, tokenizer=tokenizer, patch_size=PATCH,
                                     vision_feature_select_strategy="default", num_additional_image_tokens=1)
    if family == "llava_onevision":
        from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
            LlavaOnevisionImageProcessorPil)

        pixels = LlavaOnevisionImageProcessorPil(size=square, image_grid_pinpoints=_GRID)
        return images_only_processor(tf.LlavaOnevisionProcessor, image_processor=pixels, tokenizer=tokenizer,
                                          num_image_tokens=(IMAGE // PATCH) ** 2, vision_feature_select_strategy="full",
                                          vision_aspect_ratio="anyres_max_9", image_token="<image>")
    if family in ("qwen3_vl", "qwen3_5"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        # Up to 64x64 pixels (Qwen2-VL's inputs stop at 32x32): more image tokens than Qwen2.5-VL's
        # for the same image, so a pair of the two reads different prompts.
        pixels = Qwen2VLImageProcessorPil(**dict(_QWEN_PIXELS, max_pixels=4 * IMAGE * IMAGE))
        return images_only_processor(tf.Qwen3VLProcessor, image_processor=pixels, tokenizer=tokenizer)
    if family == "internvl":
        from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

        pixels = GotOcr2ImageProcessorPil(size=square, crop_to_patches=False)
        return images_only_processor(tf.InternVLProcessor, image_processor=pixels, tokenizer=tokenizer,
                                     image_seq_length=4)
    if family == "gemma3":
        from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

        return tf.Gemma3Processor(image_processor=Gemma3ImageProcessorPil(size=square), tokenizer=tokenizer,
                                  image_seq_length=4)
    if family in ("idefics3", "smolvlm"):
        # SmolVLM's processor needs num2words; its prompt for an unsplit image is Idefics3's.
        from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

        pixels = Idefics3ImageProcessorPil(size={"longest_edge": IMAGE}, max_image_size={"longest_edge": IMAGE},
                                           do_image_splitting=False)
        return tf.Idefics3Processor(image_processor=pixels, tokenizer=tokenizer, image_seq_len=4)
    if family == "paligemma":
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        pixels = SiglipImageProcessorPil(size=square)
        pixels.image_seq_length = (IMAGE // PATCH) ** 2
        return tf.PaliGemmaProcessor(image_processor=pixels, tokenizer=tokenizer)
    return None


def family_inputs(family: str, prompts: Sequence[str] = PROMPTS, pictures: Sequence | None = None):
    """What `family`'s processor returns for left-padded `prompts` with one image each (the
    family's image placeholder put first), as a BatchFeature of tensors; text only for llama."""
    if family == "llama":
        return family_tokenizer().__call__(list(prompts), return_tensors="pt", padding=True)
    pictures = images() if pictures is None else list(pictures)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        return tiny.qwen2_vl_inputs(family_tokenizer(), [f"<image>{p}" for p in prompts], pictures)
    if family == "mistral3":
        return pixtral_inputs(family_tokenizer(family), prompts, pictures)
    proc = processor(family)
    placeholder = {"qwen3_vl": "<|vision_start|><|image_pad|><|vision_end|>",
                   "qwen3_5": "<|vision_start|><|image_pad|><|vision_end|>", "gemma3": "<start_of_image>",
                   "internvl": "<IMG_CONTEXT>",
                   "mistral3": "[IMG]"}.get(family, "<image>")
    texts = [f"{placeholder}{prompt}" for prompt in prompts]
    nested = family in ("idefics3", "smolvlm", "gemma3")  # these take a list of images per prompt
    return proc(images=[[image] for image in pictures] if nested else pictures, text=texts, return_tensors="pt",
                padding=True)


def pixtral_inputs(tokenizer, prompts: Sequence[str], pictures: Sequence):
    """What PixtralProcessor (Mistral3's; it needs torchvision) returns for prompts with one image
    each: "[IMG]" per merged patch of a row, "[IMG_BREAK]" after each row, "[IMG_END]" last."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    merged = PATCH * 2  # patch_size x spatial_merge_size
    pixels = PixtralImageProcessorPil(size={"longest_edge": IMAGE}, patch_size=merged)(
        images=list(pictures), return_tensors="pt")
    texts = []
    for prompt, (height, width) in zip(prompts, pixels["image_sizes"].tolist()):
        rows = ["[IMG]" * (width // merged) + "[IMG_BREAK]"] * (height // merged)
        texts.append("".join(rows)[:-len("[IMG_BREAK]")] + "[IMG_END]" + prompt)
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch.update(pixels)
    return batch


def save_folder(family: str, role: str, folder) -> None:
    """Save build(family, role) and its processor to `folder`, as a user's model folder. A
    processor that takes videos too cannot be saved without its video processor (torchvision):
    its parts are saved instead (tokenizer, image processor, processor_config.json)."""
    import json
    import pathlib

    build(family, role).save_pretrained(folder)
    proc = processor(family)
    if getattr(proc, "video_processor", "absent") is not None:
        proc.save_pretrained(folder)
        return
    proc.tokenizer.save_pretrained(folder)
    proc.image_processor.save_pretrained(folder)
    settings = {"processor_class": type(proc).__name__}
    for key in ("image_seq_length", "num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio"):
        if hasattr(proc, key):
            settings[key] = getattr(proc, key)
    (pathlib.Path(folder) / "processor_config.json").write_text(json.dumps(settings))
