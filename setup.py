"""Package list for pyproject.toml's setuptools build: configs/ ships inside the package as medssl_jax.configs."""
import setuptools

packages = setuptools.find_packages(include=["medssl_jax", "medssl_jax.*", "tfds_builders", "tfds_builders.*"])
setuptools.setup(packages=packages + ["medssl_jax.configs"], package_dir={"medssl_jax.configs": "configs"})
