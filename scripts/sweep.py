"""Thin entry point: same as the `diffplan-sweep` console command (Hydra overrides as arguments)."""

from diffplan.cli.sweep import main

if __name__ == "__main__":
    main()
