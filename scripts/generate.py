"""Thin entry point: same as the `diffplan-generate` console command (Hydra overrides as arguments)."""

from diffplan.cli.generate import main

if __name__ == "__main__":
    main()
