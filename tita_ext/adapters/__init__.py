"""How a Hugging Face model is driven: its family, its inputs, its own KV cache, one step at a time
(ModelRunner: a dynamic cache; StaticRunner: a preallocated static cache for captured steps)."""

from .family import Family, family_for, image_token_id, model_family
from .runner import ModelRunner
from .static_cache import StaticCacheUnsupported, StaticRunner, check_static_cache_support

__all__ = ["Family", "ModelRunner", "StaticCacheUnsupported", "StaticRunner", "check_static_cache_support",
           "family_for", "image_token_id", "model_family"]
