"""Modalities: what each kind of signal supplies to the shared engine and pipelines (base.py is the
protocol): images, audio, video, any of them in an autoencoder's latent space, and the autoencoder."""
