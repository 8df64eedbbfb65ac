"""The command line: `medssl --config=<config>[:variant] --workdir=DIR [--config.a.b=value ...]`.

The same command is `python -m medssl_jax ...` and, in a checkout, `python main.py ...`. `<config>` is the path of
a config file or the name of a shipped config (`medssl --help` lists them with their variants, and the modes).
What runs is chosen by `config.mode`, looked up in the mode registry (medssl_jax/experiment.py). A user error
(a bad key, value, config name or override) prints one line starting with FATAL and exits with status 2.
"""
from __future__ import annotations

import os
import pathlib
import re
import signal
import sys
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import medssl_jax  # noqa: F401  First: sets the XLA:CPU flags before jax starts (medssl_jax/xla_cpu.py).
import jax  # noqa: E402  After medssl_jax, whose import sets the XLA:CPU flags.
from medssl_jax import config as config_lib
from medssl_jax import errors
from medssl_jax import experiment
from medssl_jax import paths
from medssl_jax.train import checkpoint as ckpt_lib
from medssl_jax.train import distributed
from medssl_jax.train import guard

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config: the path of a config file or the name of a shipped config, with an optional "
    "':variant' (e.g. demo_simclr:quick); `--help` lists them. config.mode chooses what runs.", lock_config=True)
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
  config = final_config()
  distributed.initialize(config)  # Before anything touches a device (multi-host runs only).
  try:
    experiment.validate(config)
  except ValueError as e:  # A bad or renamed key in the config file: one line, as for a bad override.
    errors.fatal(str(e))
  started = time.time()
  try:
    with guard.stop_anywhere():  # SIGTERM / Ctrl-C outside the training loop: stop at once, say what is kept.
      experiment.run(config, _WORKDIR.value)
  except guard.Stopped as e:
    print(f"{e} before the run finished; {kept(_WORKDIR.value)}. Rerun the same command to continue from there",
          flush=True)
    raise
  except guard.Diverged as e:  # The message says the step, the metric and what was kept: no traceback needed.
    errors.fatal(str(e))
  except errors.USER_ERRORS as e:
    # Bad input met at run time (a workdir holding another run, missing dataset files, ...): the message names
    # the file, key or value and what to do.
    errors.report(e, verbose=flags.FLAGS["verbosity"].present)
  if jax.process_index() == 0:
    print(where_results_are(_WORKDIR.value, since=started), flush=True)


def kept(workdir: str) -> str:
  """What an interrupted run leaves for the next one, in words."""
  steps = ckpt_lib.checkpoint_steps(workdir) if paths.exists(workdir) else []
  if not steps:
    return f"no checkpoint in {workdir} yet (a rerun starts training from the beginning)"
  return f"{paths.join(workdir, 'checkpoints', steps[-1])} and every result written before it are kept"


def final_config():
  """The parsed --config with its overrides, and sizes derived from an overridden one following it
  (config.follow_image_size)."""
  flag = flags.FLAGS["config"]
  loaded = config_lib.load(config_flags.get_config_filename(flag))  # The file's values, before the overrides.
  config_lib.follow_image_size(_CONFIG.value, loaded.data.image_size, list(config_flags.get_override_values(flag)))
  return _CONFIG.value


def where_results_are(workdir: str, *, since: float) -> str:
  """The closing lines of a run: the result tables it wrote (Markdown files under the workdir changed since
  `since`) and the TensorBoard command."""
  root = paths.path(workdir)
  tables = []
  if not paths.is_url(workdir):  # Object stores list no modification times cheaply: name the folder only.
    tables = sorted(str(p.relative_to(root)) for p in pathlib.Path(root).rglob("*.md")
                    if p.stat().st_mtime >= since - 1 and p.relative_to(root).parts[0] not in ("checkpoints", "tb"))
  lines = [f"done: {root}" + (f"; results: {', '.join(tables)}" if tables else "")]
  if (root / "tb").is_dir():
    lines.append(f"TensorBoard: tensorboard --logdir {root / 'tb'}")
  return "\n".join(lines)


def usage() -> str:
  """What `--help` prints before the flags: the command, the shipped configs with their variants, the modes."""
  lines = ["usage: medssl --config=<config>[:variant] --workdir=DIR [--config.<section>.<key>=<value> ...]", "",
           f"Shipped configs ({config_lib.shipped_config_dir()}), with the variants each accepts:"]
  names = config_lib.shipped_configs()
  tables = [n for n in names if n.startswith("table_")]
  for name in [n for n in names if n not in tables] + tables:
    if tables and name == tables[0]:
      lines += ["", "Tables (python -m medssl_jax.tables.runner --table=<table>[:variant] --workdir=DIR):"]
    variants = config_lib.variants_of(name)
    lines.append(f"  {name:28s} " + (", ".join(f":{v}" for v in variants) if variants else ""))
  lines += ["", "Modes (config.mode): " + ", ".join(sorted(experiment.MODES)), "",
            "Any config key can be overridden, e.g. --config.train.num_steps=100 --config.mode=linear_eval.", ""]
  return "\n".join(lines)


def parse_flags(argv):
  """absl's flag parsing, with a bad config name or `--config.a.b=v` override reported in one line."""
  if any(a in ("--help", "-h", "--helpshort", "-?") for a in argv[1:]):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `medssl --help | head` ends quietly, as other commands do.
    print(usage() + "\nFlags:\n" + flags.FLAGS.module_help(__name__) + "\n\n--helpfull lists every flag.")
    sys.exit(0)
  try:
    argv = config_lib.resolve_config_flag(argv)
    for a in argv[1:]:
      if a.startswith("--config="):  # Loaded here too, so a bad variant or value is one line, not absl's traceback.
        config_lib.load(a[len("--config="):])
  except (FileNotFoundError, ValueError) as e:
    errors.fatal(str(e))
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = re.sub(r"\s+", " ", str(e).replace("\\n", " ").replace("\\'", "'")).strip()
    if len(message) > 1 and message[0] == message[-1] and message[0] in "'\"":
      message = message[1:-1]  # KeyError's repr quotes.
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    if isinstance(e, config_lib.UnknownVariant) or not overrides:
      errors.fatal(message)
    renamed = config_lib.renamed_in_args(argv[1:])  # absl's message names the old key's section, not the new key.
    errors.fatal(f"could not apply the config override(s) {overrides}: "
                 f"{'; '.join(renamed) or config_lib.override_problem(argv[1:]) or message}")


def run():
  """The `medssl` console script."""
  app.run(main, flags_parser=parse_flags)
