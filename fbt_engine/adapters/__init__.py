"""The canonical 4-stage view of timm models (method.md section 2)."""

from .base import Adapter, Part, StageInfo, pool_features, split_depth
from .registry import family_of, family_of_module, get_adapter, register_adapter, supported_families
from . import families as _families  # noqa: F401  (registers the adapters)

__all__ = ["Adapter", "Part", "StageInfo", "pool_features", "split_depth", "family_of", "family_of_module",
           "get_adapter", "register_adapter", "supported_families"]
