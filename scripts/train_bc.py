"""Thin entry point: same as the `diffplan-train-bc` console command (Hydra overrides as arguments)."""

from diffplan.cli.train_bc import main

if __name__ == "__main__":
    main()
