"""Research projects built on the core rooms. Each owns its modes (a `modes.py` listing `MODES`), its config
section and its outputs; medssl_jax/experiment.py lists the project's modes module once. The core never
imports a project."""
