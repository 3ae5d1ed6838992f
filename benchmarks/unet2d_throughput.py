"""Training/sampling throughput of our UNet2D vs diffusers and denoising-diffusion-pytorch (same FLOPs, same run)."""
from multidiff.bench.unet2d_throughput import main

if __name__ == "__main__":
    main()
