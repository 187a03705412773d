"""The training wing: catalog → torch Dataset → 4-channel VAE → latent shards → unconditional DiT.

One module per concept (``dataset``, ``vae``, ``latents``, ``dit``, ``diffusion``, ``trainer``,
``metrics``, ``export``). It reads pixels through :mod:`rsgeo_prune.pixels` and never imports the selection code,
the orchestrator (``pipeline``) or the front ends (``cli``, ``viz``, ``demo``).

``rsgeo_prune.train.load_dit(folder)`` and ``export_dit(checkpoint)`` (from :mod:`.export`) are loaded on first use,
so importing the package stays cheap.
"""

_EXPORTS = ("export_dit", "load_dit", "read_export")


def __getattr__(name: str):
    if name in _EXPORTS:
        from . import export

        return getattr(export, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
