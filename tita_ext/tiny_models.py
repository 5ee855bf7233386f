"""Tiny Hugging Face models and a tokenizer built in code: no download, a few MB, seconds to make.

They are real `transformers` architectures (LLaVA, Qwen2-VL, Qwen2.5-VL, Llama) with random
weights, used by the tests, the end-to-end benchmark and `tita-ext demo`. The tokenizer is a
byte-level BPE trained here on a small built-in corpus, so every id decodes to real text.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

# Special tokens, in id order: ids 0..len-1 are the same for every tiny model.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<image>", "<|vision_start|>", "<|vision_end|>", "<|video|>")
UNK_ID, BOS_ID, EOS_ID, PAD_ID, IMAGE_ID, VISION_START_ID, VISION_END_ID, VIDEO_ID = range(len(SPECIAL_TOKENS))
TOKENIZER_TARGET_SIZE = 512  # BPE stops early on the small corpus: the tokenizer has fewer ids
VOCAB_WIDTH = 512  # default logit width; ids past the tokenizer are padding, as in real checkpoints

IMAGE_SIZE = 32  # pixels; LLaVA: 8-pixel patches -> 16 image tokens; Qwen2-VL: 2x2-merged 8-pixel patches -> 4
PATCH_SIZE = 8

_COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40),
           "white": (240, 240, 240), "black": (15, 15, 15)}
_SHAPES = ("cube", "ball", "cone", "ring", "star", "box")
_PLACES = ("on a table", "next to a cup", "under a lamp", "in a box", "on the floor", "near a window")


def _corpus() -> list[str]:
    """Short captions and answers about coloured objects: the text the tokenizer is trained on."""
    lines = []
    for color in _COLORS:
        for shape in _SHAPES:
            for place in _PLACES:
                lines.append(f"There is a {color} {shape} {place}.")
                lines.append(f"USER: What is in the picture? ASSISTANT: A {color} {shape} {place}.")
                lines.append(f"Is there a {shape} in the image? Yes, there is a {color} {shape}.")
                lines.append(f"Is there a {shape} in the image? No, there is no {shape}.")
    return lines


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_TARGET_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A fresh byte-level BPE tokenizer (`PreTrainedTokenizerFast`, under 512 ids, left padding)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>", "vision_start_token": "<|vision_start|>",
                              "vision_end_token": "<|vision_end|>", "video_token": "<|video|>"},
        padding_side="left",
    )
    return tokenizer


def _text_config(hidden_size: int, layers: int, vocab_width: int, init_std: float) -> dict:
    return dict(vocab_size=vocab_width, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                initializer_range=init_std, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                tie_word_embeddings=False)


@functools.lru_cache(maxsize=1)
def tokenizer_size() -> int:
    """How many ids the tiny tokenizer has (the rest of every logit row is padding)."""
    return len(tiny_tokenizer())


def _build(make, seed: int, real_ids: int | None = None) -> torch.nn.Module:
    """make() under a fixed seed (same seed, same weights; the global RNG is left alone), in eval
    mode, with a generation config that matches the tokenizer.

    The output rows of padding ids (from `real_ids` on: the tiny tokenizer's size by default) are
    zeroed, as in real checkpoints whose padded rows were never trained: their logit is 0 while
    the real ids' random logits reach well above it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    with torch.no_grad():
        model.get_output_embeddings().weight[real_ids or tokenizer_size():] = 0.0
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    gen.do_sample, gen.max_new_tokens = False, 16
    return model.eval()


def tiny_llama(*, hidden_size: int = 64, layers: int = 2, vocab_width: int = VOCAB_WIDTH, seed: int = 0,
               init_std: float = 0.02):
    """A `LlamaForCausalLM` over the tiny tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**_text_config(hidden_size, layers, vocab_width, init_std))
    return _build(lambda: LlamaForCausalLM(config), seed)


def tiny_llava(*, hidden_size: int = 64, layers: int = 2, vocab_width: int = VOCAB_WIDTH, seed: int = 0,
               init_std: float = 0.02, vision_hidden_size: int = 32, vision_layers: int = 1):
    """A `LlavaForConditionalGeneration`: a small CLIP vision tower on 32x32 images (8-pixel
    patches: 16 image tokens), Llama text."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
                              num_hidden_layers=vision_layers, num_attention_heads=2, image_size=IMAGE_SIZE,
                              patch_size=PATCH_SIZE, projection_dim=vision_hidden_size)
    text = LlamaConfig(**_text_config(hidden_size, layers, vocab_width, init_std))
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_ID,
                         vision_feature_layer=-1, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu", initializer_range=init_std)
    return _build(lambda: LlavaForConditionalGeneration(config), seed)


def tiny_llava_processor(tokenizer=None):
    """The `LlavaProcessor` for `tiny_llava` (PIL image processor: no torchvision needed)."""
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    images = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                                   crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer or tiny_tokenizer(), patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          image_token="<image>")


def tiny_qwen2_vl(*, version: str = "2", hidden_size: int = 64, layers: int = 2, vocab_width: int = VOCAB_WIDTH,
                  seed: int = 0, init_std: float = 0.02):
    """A `Qwen2VLForConditionalGeneration` (version "2") or `Qwen2_5_VLForConditionalGeneration`
    ("2.5"): multimodal rope over a one-block vision tower, 32x32 images -> 4 merged tokens."""
    text = _text_config(hidden_size, layers, vocab_width, init_std)
    head_dim = hidden_size // text["num_attention_heads"]
    quarter = head_dim // 4
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter]}
    ids = dict(image_token_id=IMAGE_ID, video_token_id=VIDEO_ID, vision_start_token_id=VISION_START_ID,
               vision_end_token_id=VISION_END_ID)
    common_vision = dict(patch_size=PATCH_SIZE, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                         num_heads=2, depth=1)
    if version == "2":
        from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

        vision = dict(common_vision, embed_dim=32, hidden_size=hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
        make = lambda: Qwen2VLForConditionalGeneration(config)  # noqa: E731
    elif version == "2.5":
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        vision = dict(common_vision, hidden_size=32, intermediate_size=64, out_hidden_size=hidden_size,
                      window_size=16, fullatt_block_indexes=[0])
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **ids)
        make = lambda: Qwen2_5_VLForConditionalGeneration(config)  # noqa: E731
    else:
        raise ValueError(f"version must be '2' or '2.5', got {version!r}")
    for cfg in (config, config.get_text_config()):
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = BOS_ID, EOS_ID, PAD_ID
    return _build(make, seed)


def qwen2_vl_inputs(tokenizer, prompts: Sequence[str], images: Sequence):
    """What `Qwen2VLProcessor` returns for prompts with one image each, built from the PIL image
    processor and the tokenizer (the real processor also needs torchvision for videos).

    Each prompt holds one "<image>" where the image goes; it is expanded to the image's merged
    patch count between vision start/end tokens. Returns a BatchFeature with input_ids,
    attention_mask, mm_token_type_ids (1 on image tokens), pixel_values and image_grid_thw."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=IMAGE_SIZE * IMAGE_SIZE // 4, max_pixels=IMAGE_SIZE * IMAGE_SIZE,
                                         patch_size=PATCH_SIZE, merge_size=2, temporal_patch_size=2)
    pixels = processor(images=list(images), return_tensors="pt")
    texts = []
    for prompt, grid in zip(prompts, pixels["image_grid_thw"]):
        tokens = int(grid.prod()) // 4
        texts.append(prompt.replace("<image>", "<|vision_start|>" + "<image>" * tokens + "<|vision_end|>", 1))
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    batch["mm_token_type_ids"] = (batch["input_ids"] == IMAGE_ID).to(torch.int32)
    batch.update(pixels)
    return batch


def demo_image(color: str = "red", size: int = 40):
    """A solid-colour square PIL image (colours: red, green, blue, yellow, white, black)."""
    from PIL import Image

    if color not in _COLORS:
        raise ValueError(f"color must be one of {', '.join(_COLORS)}, got {color!r}")
    return Image.new("RGB", (size, size), _COLORS[color])
