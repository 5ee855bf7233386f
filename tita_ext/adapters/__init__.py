"""How a Hugging Face model is driven: its family, its inputs, its own KV cache, one step at a time
(ModelRunner: a dynamic cache; StaticRunner: a preallocated static cache for captured steps)."""

from .family import Family, check_guidable, family_for, image_token_id, model_family
from .runner import ModelRunner, cache_argument
from .static_cache import StaticCacheUnsupported, StaticRunner, check_static_cache_support

__all__ = ["Family", "ModelRunner", "StaticCacheUnsupported", "StaticRunner", "cache_argument", "check_guidable",
           "check_static_cache_support", "family_for", "image_token_id", "model_family"]
