"""Modes that evaluate an encoder on config.data with config.eval's protocol (medssl_jax/protocols/probe.py):

  linear_eval         the pretrained encoder in the workdir (and a random init when eval.compare_random_init)
  pretrain_and_probe  pretraining (resumable), then the same evaluation
  supervised          a random init fine-tuned with labels (eval.protocol "finetune"): the from-scratch recipe
  inflate_and_probe   the 2D encoder pretrained in model.inflate_from, inflated into the config's 3D encoder (no 3D
                      pretraining), then the same evaluation (beside a random init when eval.compare_random_init).
                      inflate_from is a 2D pretraining workdir, or a config ('<path>.py[:variant]') whose
                      pretraining runs first in <workdir>/inflate_source, with the row's seed, width and budget
                      (protocols/encoders.py: SOURCE_KEYS). In pretrain_and_probe, inflate_from starts the 3D
                      pretraining from the inflated encoder instead of a random init

Results go to <workdir>/<protocols.probe.results_name(config)>.{json,md}; image-text objectives also get
report retrieval (medssl_jax/protocols/retrieval.py).
"""
from __future__ import annotations


from medssl_jax import objectives
from medssl_jax import paths
from medssl_jax.data import pipeline
from medssl_jax.protocols import encoders as encoders_lib
from medssl_jax.protocols import probe as probe_lib
from medssl_jax.protocols import retrieval as retrieval_protocol
from medssl_jax.train import pretrain as pretrain_lib


def linear_eval(config, workdir: str, *, mesh=None) -> dict:
  builder = pipeline.open_dataset(config.data)
  model, variables = encoders_lib.load_pretrained(config, workdir)
  return _evaluate(config, {f"{config.objective.name} (pretrained)": (model, variables, False)}, builder=builder,
                   workdir=workdir, mesh=mesh)


def pretrain_and_probe(config, workdir: str, *, mesh=None) -> dict:
  builder = pipeline.open_dataset(config.data)
  model, state = pretrain_lib.pretrain(config, workdir, builder=builder, mesh=mesh,
                                       init_variables=encoders_lib.inflated_start(config, workdir, mesh=mesh))
  return _evaluate(config, {f"{config.objective.name} (pretrained)": (model, state.variables, False)},
                   builder=builder, workdir=workdir, mesh=mesh)


def supervised(config, workdir: str, *, mesh=None) -> dict:
  """Supervised training from scratch (e.g. the MedMNIST recipe): the random encoder fine-tuned with labels;
  no pretraining, nothing to compare against."""
  builder = pipeline.open_dataset(config.data)
  paths.makedirs(workdir)
  model, variables = encoders_lib.random_init_variables(config)
  encoders = {probe_lib.SCRATCH: (model, variables, True)}
  return probe_lib.probe_and_write(config, encoders, builder=builder, workdir=workdir, mesh=mesh)


def inflate_and_probe(config, workdir: str, *, mesh=None) -> dict:
  builder = pipeline.open_dataset(config.data)
  paths.makedirs(workdir)
  name, encoder = encoders_lib.inflated(encoders_lib.with_inflation_source(config, workdir, mesh=mesh))
  return _evaluate(config, {name: encoder}, builder=builder, workdir=workdir, mesh=mesh)


def _evaluate(config, encoders: dict, *, builder, workdir: str, mesh) -> dict:
  encoders = probe_lib.compare_random_init(config, encoders)
  results = probe_lib.probe_and_write(config, encoders, builder=builder, workdir=workdir, mesh=mesh)
  if objectives.get_objective(config.objective.name).text:
    # Image-text models also retrieve reports: recall@k on the test split.
    tokenizer = pretrain_lib.report_tokenizer(config, builder, workdir)
    retrieval_protocol.evaluate(config, encoders, builder=builder, tokenizer=tokenizer, workdir=workdir, mesh=mesh)
  return results


def check(config):
  if config.mode == "supervised" and config.eval.protocol != "finetune":
    raise ValueError("config.mode='supervised' trains a randomly initialised encoder with labels, which is "
                     f"eval.protocol='finetune'; got eval.protocol={config.eval.protocol!r}")
  if config.mode == "supervised" and config.model.inflate_from:
    raise ValueError(f"config.model.inflate_from={config.model.inflate_from!r} with mode 'supervised', which trains a "
                     "random init: use mode 'inflate_and_probe' with eval.protocol='finetune' to fine-tune the "
                     "inflated encoder")
  if config.mode == "inflate_and_probe" and not config.model.inflate_from:
    raise ValueError("config.mode='inflate_and_probe' needs config.model.inflate_from: a 2D pretraining workdir "
                     "whose ResNet is inflated into config.model.encoder (a 3D one), or a config whose pretraining "
                     "runs first (e.g. configs/medmnist_simclr.py:pneumoniamnist)")


MODES = {"linear_eval": linear_eval, "pretrain_and_probe": pretrain_and_probe, "supervised": supervised,
         "inflate_and_probe": inflate_and_probe}
PRETRAINING_MODES = ("pretrain_and_probe",)
