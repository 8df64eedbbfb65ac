"""SimCLR on the embedded synthetic fundus data: the same experiment as configs/demo_simclr.py.

Reproduces: SimCLR (Chen et al. 2020) on synthetic_fundus/64px_lesions2x, probed beside a random encoder
            (the README's demo table); listed here so every objective has a fundus_<name> config.
Command:    python main.py --config=configs/fundus_simclr.py --workdir=/tmp/fundus_simclr
Variants:   `:quick` (40 steps of a tiny model on synthetic_fundus/small).
"""
from medssl_jax import config as config_lib

get_config = config_lib.sibling(__file__, "demo_simclr").get_config  # One recipe, two names.
__all__ = ["get_config"]
