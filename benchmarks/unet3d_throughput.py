"""Training/sampling throughput of our UNet3D vs video-diffusion-pytorch's Unet3D (same FLOPs, same run)."""
from multidiff.bench.unet3d_throughput import main

if __name__ == "__main__":
    main()
