"""SWCL (Yap & Ng 2021): semi-weakly supervised contrastive learning for fundus images, stages 1-5."""
