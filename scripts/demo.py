"""Thin entry point: same as the `diffplan-demo` console command (Hydra overrides as arguments)."""

from diffplan.cli.demo import main

if __name__ == "__main__":
    main()
