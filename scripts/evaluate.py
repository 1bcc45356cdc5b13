"""Thin entry point: same as the `diffplan-evaluate` console command (Hydra overrides as arguments)."""

from diffplan.cli.evaluate import main

if __name__ == "__main__":
    main()
