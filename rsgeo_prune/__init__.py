"""rsgeo_prune: curate remote-sensing tile corpora for diffusion training (RS-Prune).

The stages, each in its own module: ``sources`` (open inputs), ``tiling`` (tile grid, nodata),
``masks`` (urban fraction, pre-filters), ``catalog`` (GeoParquet), ``pipeline`` (stages in order),
``synth`` (synthetic scenes for tests and demos).
"""

__version__ = "0.1.0"


from .catalog import read_catalog, write_geoparquet  # noqa: E402
from .errors import RSGeoPruneError  # noqa: E402
from .masks import mask_filter, read_vector, urban_fraction  # noqa: E402
from .pipeline import TileConfig, tiles_stage  # noqa: E402
from .sources import (ImageCollection, RasterScene, describe_image_collection, describe_raster,  # noqa: E402
                      describe_stac_item, open_raster, resolve_inputs)
from .tiling import nodata_fraction, tile_grid  # noqa: E402

__all__ = [
    "ImageCollection", "RSGeoPruneError", "RasterScene", "TileConfig", "describe_image_collection",
    "describe_raster", "describe_stac_item", "mask_filter", "nodata_fraction", "open_raster", "read_catalog",
    "read_vector", "resolve_inputs", "tile_grid", "tiles_stage", "urban_fraction", "write_geoparquet",
]
