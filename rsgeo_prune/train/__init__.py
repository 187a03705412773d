"""The training wing: catalog → torch Dataset → 4-channel VAE → latent shards → unconditional DiT.

One module per concept; data flows up this list, never down:

* plumbing: ``device`` (device, precision), ``rng`` (data order, RNG states), ``convert`` (the repeated
  conversions), ``checkpoint`` (states and weight files), ``runlog`` (metrics log, progress bar),
  ``distributed`` (torchrun/DDP), ``loop`` (the training-loop skeleton every trainer runs);
* models and maths: ``diffusion`` (processes, samplers), ``dit``, ``augment``, ``dataset``, ``features`` (feature
  spaces), ``metrics`` (FD, KID, precision/recall), ``vae_model`` (the VAE's presets and I/O);
* stages: ``vae`` (train the VAE), ``latents`` (encode), ``export``, ``sampling``, ``trainer`` (train the DiT);
* front ends: ``commands``, ``dit_commands``. It reads pixels through :mod:`rsgeo_prune.pixels` and never imports the
selection code,
the orchestrator (``pipeline``) or the front ends (``cli``, ``viz``, ``demo``).

``rsgeo_prune.train.load_dit(folder)``, ``read_export(folder)`` (from :mod:`.export`) and
``export_dit(checkpoint)`` (from :mod:`.sampling`) are loaded on first use, so importing the package stays cheap.
"""

_EXPORTS = {"export_dit": "sampling", "load_dit": "export", "read_export": "export"}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
