"""Curricular SimCLR on PneumoniaMNIST (28 px): three pretext stages of increasing augmentation strength,
each resuming from the last (de Andres Tame et al. 2023's curriculum of pretext tasks), then a linear probe.

Reproduces: the curriculum arm beside the single-stage baseline configs/medmnist_simclr.py:
            pneumoniamnist (same data, encoder, heads, optimizer, batch and total steps, 2000): SimCLR (Chen et
            al. 2020) on the training split only, CIFAR-stem ResNet-18 x0.25 at 28 px, then the frozen encoder
            linear-probed beside a random one. Stages (medssl_jax/train/curriculum.py):
              1 "weak"   600 steps: crop scale (0.6, 1), flip, no brightness/contrast jitter, no blur
              2 "medium" 700 steps: crop scale (0.35, 1), jitter on, no blur
              3 "strong" 700 steps: crop scale (0.2, 1), jitter and light blur on
            Each stage has a fresh AdamW state with a short warm-up and its own cosine decay.
Command:    python main.py --config=configs/pneumonia_curricular.py:cpu --workdir=/tmp/pneumonia_curricular
            (compare with main.py --config=configs/medmnist_simclr.py:pneumoniamnist at the same width)
Data:       medmnist/pneumoniamnist from $MEDSSL_SHARED_DATA/pneumoniamnist (default ../shared/data).
Variants:   (none) 600 + 700 + 700 steps, batch 256, width x0.25; `:cpu` the same stages at batch 128 (the
            2-core CPU budget); `:cpu_single` one 2000-step stage at the strong views (the single-stage
            baseline, same code path); `:quick` 5 + 5 + 5 steps of a ResNet-18 x0.125, batch 32 (a smoke run).
Outputs:    <workdir>/stages/<k>_<name>/ per stage, <workdir>/checkpoints/2000/ (final encoder, usable by
            modes linear_eval / transfer / analyze), probe_results.{json,md}.
Attention-in-lung: the same command with --config.mode=analyze: Grad-CAM of a linear probe head on the final
            encoder (and a random one), and the fraction of each map inside the lung fields, which PneumoniaMNIST
            lacks as masks and medssl_jax/data/lung_mask.py segments from the images (analysis.derived_mask),
            beside the lung area (a uniform map's fraction); <workdir>/analysis/test/summary.md.
Table:      docs/tables/pneumonia_curricular_cpu.md (seeds 0-2, with the commands).
"""
from medssl_jax import config as config_lib
from medssl_jax.augment import views

_medmnist = config_lib.sibling(__file__, "_medmnist")


NAME = "pneumoniamnist"
# Grayscale scans: brightness / contrast only, never hue / saturation / grayscale.
_GRAY = dict(crop_size=28, saturation=0.0, hue=0.0, grayscale_p=0.0, blur_sigma=(0.1, 1.0))


def _views(**strength):
  v = views.default_view(**dict(_GRAY, **strength))
  return [v, v]


WEAK = _views(crop_scale=(0.6, 1.0), jitter_p=0.0, blur_p=0.0)
MEDIUM = _views(crop_scale=(0.35, 1.0), jitter_p=0.8, blur_p=0.0)
STRONG = _views(crop_scale=(0.2, 1.0), jitter_p=0.8, blur_p=0.5)


def _stages(steps, warmup):
  return tuple({"name": name, "num_steps": n, "overrides": {"augment.views": v, "train.warmup_steps": warmup}}
               for name, n, v in (("weak", steps[0], WEAK), ("medium", steps[1], MEDIUM),
                                  ("strong", steps[2], STRONG)))


def cpu(c):
  """Batch 128: the 2-core CPU budget (same stages and total steps)."""
  c.train.batch_size = 128


def cpu_single(c):
  """`cpu` with one stage: 2000 steps at the final (strong) views, the single-stage SSL baseline through the
  same code path (same encoder, optimizer, batch and total steps)."""
  cpu(c)
  c.curriculum.stages = ({"name": "strong", "num_steps": 2000,
                          "overrides": {"augment.views": STRONG, "train.warmup_steps": 50}},)


def quick(c):
  """5 + 5 + 5 steps of a ResNet-18 x0.125 at batch 32: a smoke run of the whole mode."""
  c.model.width_multiplier = 0.125
  c.model.projector_hidden_dims = (64,)
  c.model.projector_dim = 32
  c.train.batch_size = 32
  c.train.num_steps = 15
  c.train.log_every = 5
  c.train.checkpoint_every = 5
  c.curriculum.stages = _stages((5, 5, 5), warmup=1)
  c.eval.max_iter = 50
  c.eval.max_train_examples = 0  # The first 512 PneumoniaMNIST records are all one class: probe on all.
  c.eval.bootstrap_samples = 0


def get_config(arg=None):
  c = _medmnist.base(NAME)
  c.mode = "curriculum"
  c.model.width_multiplier = 0.25
  c.model.projector_hidden_dims = (512,)
  c.model.projector_dim = 128
  c.objective.name = "simclr"
  c.objective.temperature = 0.2
  c.augment.views = STRONG  # The final stage's views: what the probe's input size and later modes read.
  c.train.batch_size = 256
  c.train.num_steps = 2000  # The total over the stages, as the single-stage baseline's num_steps.
  c.train.optimizer = "adamw"
  c.train.base_learning_rate = 2e-3
  c.train.warmup_steps = 50
  c.train.weight_decay = 1e-4
  c.train.log_every = 50
  c.train.checkpoint_every = 250
  c.curriculum.stages = _stages((600, 700, 700), warmup=50)
  c.eval.batch_size = 256
  c.eval.compare_random_init = True
  c.analysis.derived_mask = "lung_intensity"  # mode=analyze: attention-in-lung (see the docstring).
  c.analysis.embedding_method = "none"
  return config_lib.with_variant(c, arg, {"cpu": cpu, "cpu_single": cpu_single, "quick": quick})
