"""Embedders: the default one's quality and contract, and the two model-loading paths with tiny
randomly initialised models built here (nothing is downloaded)."""

import glob
import json

import numpy as np
import pytest

from rsgeo_prune import RSGeoPruneError
from rsgeo_prune.embed import load_embedder
from rsgeo_prune.synth import CLASSES, render_tile
from tests.conftest import shared


def _tiles(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([render_tile(CLASSES[i % len(CLASSES)], rng, 64) for i in range(n)])


def test_default_contract():
    e = load_embedder("default")
    tiles = _tiles()
    z = e(tiles)
    assert z.shape == (6, e.dim) and z.dtype == np.float32
    assert np.allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(z, load_embedder("default")(tiles))  # deterministic, fresh instance
    assert np.allclose(e(tiles.astype(np.float32) / 255.0), z, atol=1e-5)  # floats in [0, 1] too
    with pytest.raises(RSGeoPruneError, match=r"\[0, 1\]"):
        e(tiles.astype(np.float32))


def test_default_rgb_and_rgbn_share_one_space():
    """The NIR block rescales similarities to RGB centroids by one constant: rankings are unchanged."""
    e = load_embedder("default")
    tiles = _tiles(14, seed=1)
    ref = e(tiles[:7, :3])  # RGB "reference" images
    s4 = e(tiles) @ ref.T
    s3 = e(tiles[:, :3]) @ ref.T
    assert (s4.argmax(1) == s3.argmax(1)).all()
    ratio = s4 / s3
    assert np.allclose(ratio, ratio.flat[0], rtol=1e-4)


def test_default_separates_the_synthetic_classes():
    e = load_embedder("default")
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(len(CLASSES)), 4)
    z = e(np.stack([render_tile(CLASSES[k], rng, 128) for k in labels]))
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    assert (labels[s.argmax(1)] == labels).mean() == 1.0


def test_default_aid_leave_one_out_1nn():
    from PIL import Image

    root = shared("reference", "aid_150px")
    paths = sorted(glob.glob(str(root / "*" / "*.jpg")))
    labels = np.array([p.split("/")[-2] for p in paths])
    imgs = np.stack([np.moveaxis(np.asarray(Image.open(p).convert("RGB")), -1, 0) for p in paths])
    z = load_embedder("default")(imgs)
    s = z @ z.T
    np.fill_diagonal(s, -np.inf)
    accuracy = (labels[s.argmax(1)] == labels).mean()
    print(f"AID leave-one-out 1-NN accuracy of the default embedder: {accuracy:.3f} (chance 0.033)")
    assert accuracy >= 0.60


def test_bad_specs():
    with pytest.raises(RSGeoPruneError, match="unknown embedder spec"):
        load_embedder("clip-please")
    with pytest.raises(RSGeoPruneError, match="openclip:<arch>:<checkpoint-path>"):
        load_embedder("openclip:ViT-B-32")
    with pytest.raises(RSGeoPruneError, match="no such checkpoint"):
        load_embedder("openclip:ViT-B-32:/nowhere/model.pt")
    with pytest.raises(RSGeoPruneError, match="not a transformers model folder"):
        load_embedder("siglip:/nowhere")


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}


def test_openclip_from_a_local_checkpoint(tmp_path):
    import open_clip
    import torch

    (tmp_path / "TinyRS.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(tmp_path / "TinyRS.json")
    torch.manual_seed(0)
    model = open_clip.create_model("TinyRS")
    ckpt = tmp_path / "TinyRS.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)

    e = load_embedder(f"openclip:TinyRS:{ckpt}")
    tiles = _tiles(5)
    z = e(tiles)
    assert z.shape == (5, 16) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    # the same weights, applied by hand with open_clip's own preprocessing, give the same vectors
    _, _, preprocess = open_clip.create_model_and_transforms("TinyRS")
    from PIL import Image

    with torch.no_grad():
        x = torch.stack([preprocess(Image.fromarray(np.moveaxis(t[:3], 0, -1))) for t in tiles])
        want = torch.nn.functional.normalize(model.eval().encode_image(x), dim=1).numpy()
    assert np.allclose(z, want, atol=1e-5)
    both = load_embedder(f"openclip:TinyRS:{ckpt}", nir_view="concat")
    zc = both(tiles)
    assert zc.shape == (5, 32) and both.dim == 32
    assert both(tiles[:, :3])[:, 16:].sum() == 0  # RGB reference images: the NIR half is zero


def test_siglip_from_a_local_folder(tmp_path):
    import torch
    import transformers

    cfg = transformers.SiglipConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": 64,
            "max_position_embeddings": 8,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
    )
    torch.manual_seed(0)
    transformers.SiglipModel(cfg).save_pretrained(tmp_path / "tiny-siglip")
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "tiny-siglip")
    e = load_embedder(f"siglip:{tmp_path / 'tiny-siglip'}", nir_view="mean")
    tiles = _tiles(3)
    z = e(tiles)
    assert z.shape == (3, 16) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    assert np.array_equal(z, e(tiles))
    assert not np.allclose(z, load_embedder(f"siglip:{tmp_path / 'tiny-siglip'}")(tiles))  # the NIR view counts


def test_openclip_wrong_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "not_a_model.pt"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(RSGeoPruneError, match="not_a_model.pt: cannot load as an open_clip ViT-B-32 checkpoint"):
        load_embedder(f"openclip:ViT-B-32:{bad}")
