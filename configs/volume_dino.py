"""DINO on volumes (multi-crop): a 3D ResNet-18 pretrained on a MedMNIST 3D training split (28³), then probed on the
same dataset.

Reproduces: DINO (Caron et al. 2021) on volumes with the volume family's recipe (configs/_volume.py: ResNet-18 + 3D
            x0.25 with CIFAR stem, AdamW 2e-3, batch 64, 1000 steps): EMA teacher on 2 global 28³ crops (the
            family's view, volume fraction (0.35, 1); 3D blur p = 1 on the first, 0.1 on the second), student on
            those and 4 local 14³ crops (volume fraction (0.05, 0.35), blur p = 0.5); DINO head (3-layer GELU MLP
            with BatchNorm, as on every ResNet here, 64-d bottleneck, weight-normalised last layer with g = 1);
            student temperature 0.1, teacher temperature warmed up 0.04 -> 0.07 over the first 30% of the run,
            centre momentum 0.9, gradient clipping at 3.0; probes use the teacher, as the paper evaluates.
Command:    python main.py --config=configs/volume_dino.py:adrenalmnist3d --workdir=/tmp/adrenal_dino
            (`:<dataset>` is a MedMNIST 3D name; `:quick` = AdrenalMNIST3D, 20 steps of a narrow network on 2 global
            + 2 local crops, head 32-32-16 -> K = 64, probe of the pretrained encoder only.)
Data:       medmnist3d/<dataset> from --config.data.manual_dir (default $MEDSSL_SHARED_DATA/<dataset>).
Adapted:    for short runs on small batches: K = 1024 outputs (paper: 65536), hidden width 256, teacher momentum
            0.99 rising to 1 (paper 0.996), 4 local crops (paper 6-10), AdamW of the family (as
            configs/fundus_dino.py); no solarisation (volumes have no such view op); no last-layer freeze in the
            first epoch, no weight-decay schedule.
Wall-clock: `:quick` about 1.2x volume_simclr.py:quick's time (compiles and probe included; 217 s against
            186 s, one after the other on a 2-core CPU shared with other jobs).
"""
from medssl_jax import config as config_lib

_volume = config_lib.sibling(__file__, "_volume")
VARIANTS = _volume.VARIANTS


def multi_crop_views3d(*, global_size, local_size, global_scale, local_scale, num_local, **kw):
  """DINO's crops as volume views: global 1 (blur p=1), global 2 (blur p=0.1), then local (blur p=0.5)."""
  glob = lambda blur_p: _volume.view(crop_size=global_size, crop_scale=global_scale, **dict(kw, blur_p=blur_p))
  local = [_volume.view(crop_size=local_size, crop_scale=local_scale, **dict(kw, blur_p=0.5))
           for _ in range(num_local)]
  return [glob(1.0), glob(0.1)] + local


def get_config(arg=None):
  name, quick = _volume.parse(arg, config_file="configs/volume_dino.py")
  c = _volume.base("dino", name)
  num_local = 4
  c.model.projector_hidden_dims = (256, 256)  # + the bottleneck layer: DINO's 3-layer MLP.
  c.model.projector_dim = 64                  # Bottleneck.
  c.objective.num_global_views = 2
  c.objective.dino.out_dim = 1024
  c.objective.temperature = 0.1
  c.objective.dino.teacher_temperature_start = 0.04
  c.objective.dino.teacher_temperature = 0.07
  c.objective.dino.center_momentum = 0.9
  c.objective.momentum = 0.99
  c.train.grad_clip_norm = 3.0
  if quick:
    _volume.quick(c)
    num_local = 2
    c.model.projector_hidden_dims = (32, 32)  # Keep DINO's 3-layer head in the narrow model.
    c.model.projector_dim = 16
    c.objective.dino.out_dim = 64
  c.objective.dino.teacher_temperature_warmup_steps = int(0.3 * c.train.num_steps)
  c.augment.views = multi_crop_views3d(global_size=28, local_size=14, global_scale=(0.35, 1.0),
                                       local_scale=(0.05, 0.35), num_local=num_local)
  return c
