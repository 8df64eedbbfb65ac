"""Curricular self-supervised pretraining (de Andres Tame et al. 2023): pretext stages of rising difficulty,
mode "curriculum"."""
