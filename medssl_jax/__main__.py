"""`python -m medssl_jax --config=... --workdir=...`: the `medssl` command (medssl_jax/cli.py)."""
from medssl_jax import cli

if __name__ == "__main__":
  cli.run()
