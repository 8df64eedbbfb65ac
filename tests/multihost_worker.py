"""One process of a multi-process pretraining run on CPU, started by tests/test_multihost.py.

  python tests/multihost_worker.py --process_id=I --num_processes=N --devices=D --port=P --data_dir=... --workdir=...

Each process gets D simulated CPU devices; jax.distributed joins them over loopback (gloo collectives), and
medssl_jax runs `configs/demo_simclr.py:quick` as mode "pretrain" exactly as main.py would. With --grads it
instead writes the trainer loss function's loss, metrics and gradients on a fixed batch to <workdir>/grads.npz.
"""
import argparse
import os
import sys

parser = argparse.ArgumentParser()
for name in ("process_id", "num_processes", "devices", "port"):
  parser.add_argument(f"--{name}", type=int, required=True)
parser.add_argument("--num_steps", type=int, default=4)
parser.add_argument("--data_dir", default="")
parser.add_argument("--workdir", required=True)
parser.add_argument("--grads", action="store_true", help="Write loss and gradients of one fixed batch instead.")
args = parser.parse_args()
# Before jax is imported; compiled like the suite (tests/test_multihost.py passes on its XLA_FLAGS, less the device
# count).
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices} {os.environ.get('XLA_FLAGS', '')}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/device_testing.py

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain reads absl flags; this is no absl app.

from medssl_jax import experiment  # noqa: E402
from medssl_jax.config import load  # noqa: E402
from medssl_jax.train import distributed  # noqa: E402

config = load("demo_simclr", "quick")
config.mode = "pretrain"
config.data.data_dir = args.data_dir
config.train.num_steps = args.num_steps
config.train.log_every = 1
config.train.checkpoint_every = 2
# Learning rate 0: every step's loss is then a function of that step's global batch, augmentation keys and
# the (unchanged) parameters only. Any nonzero rate would not compare: SimCLR with AdamW amplifies float
# reduction-order noise (gloo vs in-process all-reduce) into loss differences of ~1e-3 within 4 steps (seen
# with an ad-hoc script), even on one host between device layouts; the gradients are compared by --grads.
config.train.base_learning_rate = 0.0
config.distributed.coordinator_address = f"127.0.0.1:{args.port}"
config.distributed.num_processes = args.num_processes
config.distributed.process_id = args.process_id
config.distributed.initialization_timeout = 120
distributed.initialize(config)
if args.grads:
  import jax
  import numpy as np
  import device_testing
  from medssl_jax.train import pretrain as pretrain_lib
  batch = device_testing.fixed_batch(config)
  rows = len(batch["id"]) // args.num_processes
  local = {k: v[args.process_id * rows:(args.process_id + 1) * rows] for k, v in batch.items()}
  model, _, tx, _ = pretrain_lib.build(config)
  state = pretrain_lib.init_train_state(config, model, tx, jax.random.key(0))
  loss, metrics, grads = device_testing.loss_and_grads(jax.devices(), config, state, local, jax.random.key(1))
  if args.process_id == 0:
    os.makedirs(args.workdir, exist_ok=True)
    np.savez(os.path.join(args.workdir, "grads.npz"), **device_testing.flatten(loss, metrics, grads))
else:
  experiment.run(config, args.workdir)
