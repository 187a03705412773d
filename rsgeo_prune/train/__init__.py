"""The training wing: catalog → torch Dataset → 4-channel VAE → latent shards → unconditional DiT.

One module per concept (``dataset``, ``vae``, ``latents``, ``dit``, ``diffusion``, ``trainer``,
``metrics``). It reads pixels through :mod:`rsgeo_prune.pixels` and never imports the selection code,
the orchestrator (``pipeline``) or the front ends (``cli``, ``viz``, ``demo``).
"""
