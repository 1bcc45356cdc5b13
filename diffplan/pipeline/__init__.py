"""The pipelines the commands, the Python API and sweeps run: collect, train (diffusion model, value
function, BC baseline, offline agents), generate, evaluate, and the demo that chains them. Each
takes a validated :class:`~diffplan.config.Config`; the command modules (:mod:`diffplan.cli`) only
compose the config and call them.
"""
