"""Microscopy particle embeddings: cluster structure, few-label classification and novelty of a held-out particle
type (medssl_jax/evals/particles.py), mode "particles"."""
