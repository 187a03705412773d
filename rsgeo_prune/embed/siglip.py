"""SigLIP backend (transformers format), e.g. Git-RSCLIP, the encoder of the RS-Prune paper.

``siglip:<local-dir>``: a folder saved with ``save_pretrained`` (config, weights, preprocessor
config). Loaded with ``local_files_only=True``: nothing is fetched. Images go through the
folder's own image processor, in batches, on the GPU in half precision when there is one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RSGeoPruneError
from ._torch import TorchImageEmbedder, pick_device


class SiglipEmbedder(TorchImageEmbedder):
    """Image features of a SigLIP model (``get_image_features``), ℓ2-normalised."""

    def __init__(self, folder: str | Path, *, nir_view: str = "none", batch_size: int = 64, device: str | None = None):
        import torch
        from transformers import AutoImageProcessor, AutoModel

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise RSGeoPruneError(
                f"{folder}: not a transformers model folder (no config.json); give the local "
                "directory of a SigLIP model such as Git-RSCLIP"
            )
        self.device = pick_device(device)
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=dtype).to(self.device).eval()
            self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise RSGeoPruneError(f"{folder}: cannot load the SigLIP model ({exc}); check the folder") from exc
        if not hasattr(self.model, "get_image_features"):
            raise RSGeoPruneError(f"{folder}: model has no image tower (get_image_features); give a SigLIP/CLIP model")
        self.batch_size = batch_size
        self.nir_view = nir_view
        self.spec = f"siglip:{folder}"
        vision = getattr(self.model.config, "vision_config", self.model.config)
        self.dim = int(vision.hidden_size) * (2 if nir_view == "concat" else 1)
        self._torch = torch

    def _encode(self, images):
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        feats = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype=self.model.dtype))
        return getattr(feats, "pooler_output", feats)
