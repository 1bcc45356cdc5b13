"""Thin entry point: same as the `diffplan-train` console command (Hydra overrides as arguments)."""

from diffplan.cli.train import main

if __name__ == "__main__":
    main()
