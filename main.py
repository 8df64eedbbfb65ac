"""medssl_jax entry point in a checkout: `python main.py --config=configs/<experiment>.py[:variant] --workdir=DIR`.

The same command as the installed `medssl` and `python -m medssl_jax` (medssl_jax/cli.py).
"""
from medssl_jax import cli

if __name__ == "__main__":
  cli.run()
