"""medssl_jax: self-supervised and semi-weakly supervised representation learning for medical images."""
from medssl_jax import xla_cpu as _xla_cpu

_xla_cpu.tune()  # Before any JAX computation: XLA reads XLA_FLAGS when its backend starts (see xla_cpu.py).

__version__ = "0.8.0"
