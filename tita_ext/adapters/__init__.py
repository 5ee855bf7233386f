"""How a Hugging Face model is driven: its family, its inputs, its own KV cache, one step at a time."""

from .family import Family, family_for, image_token_id, model_family
from .runner import ModelRunner

__all__ = ["Family", "ModelRunner", "family_for", "image_token_id", "model_family"]
