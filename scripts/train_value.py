"""Thin entry point: same as the `diffplan-train-value` console command (Hydra overrides as arguments)."""

from diffplan.cli.train_value import main

if __name__ == "__main__":
    main()
