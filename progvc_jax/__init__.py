"""progvc: ProGVC, a progressive generative video codec, in JAX/Flax."""

__version__ = "0.1.0"
