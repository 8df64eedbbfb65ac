"""Augmentations: pure JAX ops with explicit keys for images (`ops`) and volumes (`ops3d`), and
config-driven view policies (`views`) for both."""
from medssl_jax.augment import ops, ops3d, views
from medssl_jax.augment.views import (augment_batch, default_view, default_view3d, eval_view, make_views,
                                      validate_view, validate_view3d)

__all__ = ["augment_batch", "default_view", "default_view3d", "eval_view", "make_views", "ops", "ops3d",
           "validate_view", "validate_view3d", "views"]
