"""SWCL five-patch TFDS builder (stage 3), read from a stage-2 propagation folder."""
from tfds_builders.swcl_patches.swcl_patches_dataset_builder import (POSITIONS, StaleBuildError, SwclPatches,
                                                                     SwclPatchesConfig, parse_config, read_source,
                                                                     source_fingerprint)

__all__ = ['POSITIONS', 'StaleBuildError', 'SwclPatches', 'SwclPatchesConfig', 'parse_config', 'read_source',
           'source_fingerprint']
