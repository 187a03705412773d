"""rsgeo_prune: curate remote-sensing tile corpora for diffusion training (RS-Prune).

The stages, each in its own module, in the order data flows (see docs/design.md):
``sources`` → ``tiling`` → ``masks`` → ``entropy`` → ``pixels`` → ``embed`` → ``kmeans`` →
``centroids`` → ``select`` → ``catalog``/``stac``; ``pipeline`` runs them in a resumable run
directory (``rundir``); ``train`` turns a catalog into a VAE and a DiT.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rsgeo_prune")
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0+unknown"

from .catalog import read_catalog, write_geoparquet  # noqa: E402
from .config import RunConfig, TileConfig  # noqa: E402
from .errors import InvalidOption, RSGeoPruneError  # noqa: E402
from .masks import mask_filter, read_vector, urban_fraction  # noqa: E402
from .pixels import PixelReader, read_tile_pixels  # noqa: E402
from .sources import (ImageCollection, RasterScene, describe_image_collection, describe_raster,  # noqa: E402
                      describe_stac_item, open_raster, resolve_inputs)
from .tile_table import entropy_stage, tiles_stage  # noqa: E402
from .tiling import nodata_fraction, tile_grid  # noqa: E402

__all__ = [
    "ImageCollection", "InvalidOption", "PixelReader", "RSGeoPruneError", "RasterScene", "RunConfig", "TileConfig",
    "describe_image_collection", "describe_raster", "describe_stac_item", "entropy_stage", "mask_filter",
    "nodata_fraction", "open_raster", "read_catalog", "read_tile_pixels", "read_vector", "resolve_inputs",
    "tile_grid", "tiles_stage", "urban_fraction", "write_geoparquet",
]
