"""Thin entry point: same as the `diffplan-collect` console command (Hydra overrides as arguments)."""

from diffplan.cli.collect import main

if __name__ == "__main__":
    main()
