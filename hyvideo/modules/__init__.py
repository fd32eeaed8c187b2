"""Model building blocks: DiT, VAE, text encoders and the tensor math they share."""
