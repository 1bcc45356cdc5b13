"""Thin entry point: same as the `diffplan-train-offline` console command (Hydra overrides as arguments)."""

from diffplan.cli.train_offline import main

if __name__ == "__main__":
    main()
