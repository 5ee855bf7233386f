"""Model inputs for one prompt (and at most one image), for every model family.

`Preprocessor` holds what a model folder brings to turn text and an image into model inputs: the
model's processor (loaded with `AutoProcessor`; without torchvision, the processors of families
that also take videos are rebuilt for images and text: `images_only_processor`), or for
Qwen2-VL / Qwen2.5-VL folders without a processor the tokenizer and the PIL image processor; or a
plain tokenizer for a text-only causal LM. `build_inputs` then gives what the model's own
processor would return, ready for `guided_generate`.
"""

from __future__ import annotations

import inspect
import json
import pathlib
from dataclasses import dataclass
from typing import Any

import torch

from .adapters import family_for

QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")  # folders that may hold a tokenizer + image processor only


@dataclass(frozen=True)
class Preprocessor:
    """What turns a prompt and an image into one model's inputs.

    family: the config's model_type ("llava", "qwen3_vl", "gemma3", "llama", ...).
    tokenizer: the text tokenizer.
    processor: the model's processor, or None.
    image_processor: for Qwen2-VL without a processor: the image processor used with `tokenizer`.
    """

    family: str
    tokenizer: Any
    processor: Any = None
    image_processor: Any = None

    @property
    def is_vlm(self) -> bool:
        return family_for(self.family).is_vlm

    @property
    def image_token(self) -> str | None:
        """The placeholder text that marks where the image goes in a prompt."""
        if not self.is_vlm:
            return None
        token = getattr(self.processor, "image_token", None) or getattr(self.tokenizer, "image_token", None)
        if token:
            return token
        return "<|image_pad|>" if self.family in QWEN_FAMILIES else "<image>"


def family_of(model_type: str) -> str:
    """The family name of a config's model_type (the model_type itself; "causal_lm" when empty)."""
    return family_for(model_type).name


def load_preprocessor(folder: str, family: str) -> Preprocessor:
    """Load a local folder's processor or tokenizer, offline (local_files_only)."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    if not family_for(family).is_vlm:
        return Preprocessor(family, AutoTokenizer.from_pretrained(folder, local_files_only=True))
    try:
        processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (ImportError, ValueError, TypeError, AttributeError) as error:
        # Without torchvision a video processor cannot load: rebuild the processor without it.
        processor = _images_only_from_folder(folder, family)
        if processor is None and family not in QWEN_FAMILIES:
            raise ValueError(f"{folder!r} holds a {family} model whose processor cannot be loaded ({error}); "
                             "installing torchvision may help") from None
    if hasattr(processor, "tokenizer"):
        return Preprocessor(family, processor.tokenizer, processor=processor)
    if family in QWEN_FAMILIES:
        # The tokenizer and the image processor do what the processor does for images. Without
        # torchvision, AutoImageProcessor picks the PIL one (transformers >= 5.18) or refuses
        # (5.17): then load the PIL one (Qwen2.5-VL uses Qwen2-VL's) by name.
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        try:
            images = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except ImportError:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            images = Qwen2VLImageProcessorPil.from_pretrained(folder, local_files_only=True)
        return Preprocessor(family, tokenizer, image_processor=images)
    raise ValueError(f"{folder!r} holds a {family} model but no processor: save the model's processor there "
                     "too (processor.save_pretrained(folder))")


def _images_only_from_folder(folder: str, family: str):
    """The family's processor class (transformers' own mapping), made from the folder's tokenizer
    and image processor without a video processor, with the folder's processor settings; None
    when that cannot be done either."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES, processor_class_from_name

    name = PROCESSOR_MAPPING_NAMES.get(family)
    config_file = pathlib.Path(folder) / "processor_config.json"
    settings = json.loads(config_file.read_text()) if config_file.is_file() else {}
    try:
        processor_class = processor_class_from_name(settings.get("processor_class") or name)
        accepted = inspect.signature(processor_class.__init__).parameters
        extra = {key: value for key, value in settings.items()
                 if key in accepted and key not in ("image_processor", "tokenizer", "video_processor")}
        return images_only_processor(processor_class, tokenizer=AutoTokenizer.from_pretrained(folder, local_files_only=True),
                                     image_processor=AutoImageProcessor.from_pretrained(folder, local_files_only=True),
                                     **extra)
    except (ImportError, ValueError, TypeError, AttributeError, OSError):
        return None


def place_image(pre: Preprocessor, prompt: str) -> str:
    """The prompt with the model's image placeholder: inserted at the start when missing; for the
    Qwen-VL families (their processor has vision start/end tokens) wrapped in them when the prompt
    does not have them."""
    token = pre.image_token
    if pre.family in QWEN_FAMILIES or hasattr(pre.processor, "vision_start_token"):
        start = getattr(pre.tokenizer, "vision_start_token", None) or "<|vision_start|>"
        end = getattr(pre.tokenizer, "vision_end_token", None) or "<|vision_end|>"
        if token not in prompt:
            return f"{start}{token}{end}{prompt}"
        if start not in prompt:
            return prompt.replace(token, f"{start}{token}{end}", 1)
        return prompt
    return prompt if token in prompt else f"{token}\n{prompt}"


def build_inputs(pre: Preprocessor, prompt: str, image=None):
    """One row of model inputs (a BatchEncoding / BatchFeature of tensors) for `prompt` and an
    optional PIL image. Raises ValueError for an image a text-only model cannot take, or an image
    placeholder without an image."""
    if image is None:
        if pre.is_vlm and pre.image_token in prompt:
            raise ValueError(f"the prompt holds the image placeholder {pre.image_token!r} but no image was "
                             "given (--image FILE)")
        call = pre.processor if pre.processor is not None else pre.tokenizer
        return call(text=[prompt], return_tensors="pt")
    if not pre.is_vlm:
        raise ValueError(f"an image was given but this is a text-only model ({pre.family}): use a "
                         "vision-language model (see the README's supported families) or drop --image")
    prompt = place_image(pre, prompt)
    if pre.processor is not None:
        return pre.processor(images=[image], text=[prompt], return_tensors="pt")
    return _qwen_inputs_without_processor(pre, prompt, image)


def _qwen_inputs_without_processor(pre: Preprocessor, prompt: str, image):
    """What Qwen2VLProcessor returns for one prompt and one image: the placeholder repeated once
    per merged patch, the tokens, mm_token_type_ids (1 on image tokens) and the pixel inputs."""
    pixels = pre.image_processor(images=[image], return_tensors="pt")
    merge = getattr(pre.image_processor, "merge_size", 2)
    count = int(pixels["image_grid_thw"][0].prod()) // (merge * merge)
    token = pre.image_token
    batch = pre.tokenizer([prompt.replace(token, token * count, 1)], return_tensors="pt")
    image_id = pre.tokenizer.convert_tokens_to_ids(token)
    batch["mm_token_type_ids"] = (batch["input_ids"] == image_id).to(torch.int32)
    batch.update(pixels)
    return batch


def images_only_processor(processor_class: type, **parts):
    """`processor_class(**parts, video_processor=None)`: a processor for images and text only.

    Processors of families that also take videos (Qwen3-VL, InternVL, LLaVA-OneVision, ...) check
    every part's class when made, and without torchvision the video processor classes cannot be
    looked up, even for None. Images do not need them: this skips the check for the missing video
    processor only (every other part is still checked)."""
    from unittest import mock

    check = processor_class.check_argument_for_proper_class

    def check_present(self, name, argument):
        return None if argument is None and "video" in name else check(self, name, argument)

    with mock.patch.object(processor_class, "check_argument_for_proper_class", check_present):
        return processor_class(**parts, video_processor=None)
