"""Image pool TFDS builder: other builders' datasets as one unlabelled pretraining pool (package style)."""
from tfds_builders.image_pool.image_pool_dataset_builder import ImagePool, ImagePoolConfig, Member, SHARED_MEMBERS

__all__ = ['ImagePool', 'ImagePoolConfig', 'Member', 'SHARED_MEMBERS']
