"""open_clip backend: RemoteCLIP, GeoRSCLIP and any open_clip checkpoint from a local file.

``openclip:<arch>:<checkpoint-path>``: ``arch`` is an open_clip model name (``ViT-B-32``,
``ViT-L-14``, ...) or the name of a ``<arch>.json`` model config lying beside the checkpoint. The
checkpoint is loaded with ``torch.load(weights_only=True)`` semantics (open_clip's own loader),
images go through the model's own preprocessing (resize, crop, normalise), in batches, on the GPU
in half precision when there is one.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import RSGeoPruneError
from ._torch import TorchImageEmbedder, pick_device


class OpenClipEmbedder(TorchImageEmbedder):
    """Image tower of an open_clip model; output ``(N, D)`` unit vectors (``2D`` with ``nir_view="concat"``)."""

    def __init__(
        self,
        arch: str,
        checkpoint: str | Path,
        *,
        nir_view: str = "none",
        batch_size: int = 64,
        device: str | None = None,
    ):
        import open_clip
        import torch

        path = Path(checkpoint)
        if not path.is_file():
            raise RSGeoPruneError(
                f"{path}: no such checkpoint file; download the weights once and give their local path"
            )
        config = path.with_name(f"{arch}.json")
        if config.is_file():  # a custom architecture shipped with its weights
            open_clip.add_model_config(config)
        if arch not in open_clip.list_models():
            raise RSGeoPruneError(
                f"{arch!r} is not an open_clip model; use one of open_clip.list_models() "
                f"or put {arch}.json beside {path.name}"
            )
        self.device = pick_device(device)
        precision = "fp16" if self.device.startswith("cuda") else "fp32"
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=str(path), device=self.device, precision=precision, weights_only=True
            )
        except Exception as exc:  # torch/open_clip raise many types for a wrong file
            raise RSGeoPruneError(
                f"{path}: cannot load as an open_clip {arch} checkpoint ({exc}); check arch and file"
            ) from exc
        self.model = model.eval()
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.nir_view = nir_view
        self.spec = f"openclip:{arch}:{path}"
        out = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[1])
        self.dim = out * (2 if nir_view == "concat" else 1)
        self._torch = torch

    def _encode(self, images):
        batch = self._torch.stack([self.preprocess(im) for im in images])
        batch = batch.to(self.device, dtype=next(self.model.parameters()).dtype)
        return self.model.encode_image(batch)
