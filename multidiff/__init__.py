"""multidiff: one diffusion core for image, audio and video."""
__version__ = "0.1.0"
