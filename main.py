"""medssl_jax entry point: `python main.py --config=configs/<experiment>.py[:variant] --workdir=DIR`.

What runs is chosen by `config.mode`, looked up in the mode registry (medssl_jax/experiment.py). Any config
value can be overridden on the command line, e.g. `--config.train.num_steps=100`.
"""
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import medssl_jax  # noqa: F401  First: sets the XLA:CPU flags before jax starts (medssl_jax/xla_cpu.py).
import jax  # noqa: E402  After medssl_jax, whose import sets the XLA:CPU flags.
from medssl_jax import config as config_lib
from medssl_jax import experiment
from medssl_jax.train import distributed
from medssl_jax.train import guard

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:variant]); config.mode chooses what runs: "
    f"{', '.join(sorted(experiment.MODES))}.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # orbax and TFDS log every checkpoint and shard at INFO; keep the progress lines readable.
    logging.set_verbosity(logging.WARNING)
  if not jax.config.jax_compilation_cache_dir:  # JAX_COMPILATION_CACHE_DIR wins when set.
    # A persistent compile cache makes the second run of a config start in seconds.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/medssl_jax/xla"))
  distributed.initialize(_CONFIG.value)  # Before anything touches a device (multi-host runs only).
  try:
    experiment.validate(_CONFIG.value)
  except ValueError as e:  # A bad or renamed key in the config file: one line, as for a bad override.
    sys.exit(f"FATAL: {e}")
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value)
  except guard.Diverged as e:  # The message says the step, the metric and what was kept: no traceback needed.
    sys.exit(f"FATAL: {e}")


def parse_flags(argv):
  """absl's flag parsing, with a bad `--config.a.b=v` override reported in one line instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = re.sub(r"\s+", " ", str(e).replace("\\n", " ").replace("\\'", "'")).strip()
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]  # KeyError's repr quotes.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    renamed = config_lib.renamed_in_args(argv[1:])  # absl's message names the old key's section, not the new key.
    sys.exit(f"FATAL: could not apply the config override(s) {overrides}: {'; '.join(renamed) or message}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
