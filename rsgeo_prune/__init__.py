"""rsgeo_prune: curate remote-sensing tile corpora for diffusion training (RS-Prune).

The stages, each in its own module, in the order data flows (see docs/import-rule.md for who may
import whom): ``sources`` → ``tiling`` → ``masks`` → ``pixels`` → ``entropy`` → ``embed`` →
``kmeans`` → ``centroids`` → ``select`` → ``catalog``/``stac``; ``pipeline`` runs them in a resumable
run directory (``rundir``); ``train`` turns a catalog into a VAE and a DiT.

The names below are loaded on first use (PEP 562), so ``import rsgeo_prune.train.dit`` does not pay
for geopandas, dask, numba or rasterio: ``rsgeo_prune.tiles_stage`` imports the tiling stages the
first time it is read, and ``rsgeo_prune.<module>`` imports that module.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("rsgeo_prune")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

#: public name → the module that defines it
_EXPORTS = {
    "read_catalog": "catalog",
    "write_geoparquet": "catalog",
    "RunConfig": "config",
    "TileConfig": "config",
    "InvalidOption": "errors",
    "RSGeoPruneError": "errors",
    "mask_filter": "masks",
    "read_vector": "masks",
    "urban_fraction": "masks",
    "PixelReader": "pixels",
    "read_tile_pixels": "pixels",
    "ImageCollection": "sources",
    "RasterScene": "sources",
    "describe_image_collection": "sources",
    "describe_raster": "sources",
    "describe_stac_item": "sources",
    "open_raster": "sources",
    "resolve_inputs": "sources",
    "entropy_stage": "tile_table",
    "tiles_stage": "tile_table",
    "nodata_fraction": "tiling",
    "tile_grid": "tiling",
}
#: the package's modules and subpackages (``rsgeo_prune.pipeline`` works after a plain ``import rsgeo_prune``)
_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__))

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later reads skip this hook
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


if TYPE_CHECKING:  # what type checkers and IDEs see; nothing is imported at run time
    from .catalog import read_catalog, write_geoparquet
    from .config import RunConfig, TileConfig
    from .errors import InvalidOption, RSGeoPruneError
    from .masks import mask_filter, read_vector, urban_fraction
    from .pixels import PixelReader, read_tile_pixels
    from .sources import (
        ImageCollection,
        RasterScene,
        describe_image_collection,
        describe_raster,
        describe_stac_item,
        open_raster,
        resolve_inputs,
    )
    from .tile_table import entropy_stage, tiles_stage
    from .tiling import nodata_fraction, tile_grid
