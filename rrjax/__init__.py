"""rrjax: robust representations from pre-trained contrastive teachers, in JAX/Flax."""

__version__ = "0.1.0"
