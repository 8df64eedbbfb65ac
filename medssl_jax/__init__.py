"""medssl_jax: self-supervised and semi-weakly supervised representation learning for medical images."""

__version__ = "0.8.0"
