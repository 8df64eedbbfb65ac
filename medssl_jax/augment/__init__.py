"""Augmentations: pure JAX ops with explicit keys (`ops`) and config-driven view policies (`views`)."""
from medssl_jax.augment import ops, views
from medssl_jax.augment.views import augment_batch, default_view, eval_view, make_views, validate_view

__all__ = ["augment_batch", "default_view", "eval_view", "make_views", "ops", "validate_view", "views"]
