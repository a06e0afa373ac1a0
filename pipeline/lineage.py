"""The lineage of one image: each level's latent, its nearest training images at that level, and what made it.

    python -m pipeline.lineage 12                 # sample 12 of the samples artifact
    python -m pipeline.lineage z2/seed0/3         # a variation (see the variations asset's metadata)
    python -m pipeline.lineage my_drawing.png     # an image of your own, encoded as the latents stage encodes

Prints, coarsest level first, each latent's shape, the fingerprints of the artifacts that made it (the model
that sampled it, or the latents it was read from) and its nearest training images in that level's space, and
draws the chain into a PNG (`--out`, default lineage-<id>.png): one row per level, the latent's three leading SVD
channels first, then its neighbours. Reads finished artifacts only; the experiment is $NESTED_CONFIG (--config).
"""
from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from PIL import Image

from .cache import ArtifactDamaged
from .config import load_config, nested_home
from .data import iter_pixels
from .ingest import prepare_image, read_manifest
from .knn import RunningNearest, blocks
from .level_kinds import encode_images, level_kind
from .levels import decode_npy, iter_latent_samples
from .pictures import labelled_grid, latent_tile
from .plan import build_plan
from .sample import decode_level0, to_uint8
from .sample_shards import raw_samples
from .schema import Config
from .stage import Stage
from .variations import variation_latents


@dataclass
class Link:
    level: int
    latent: np.ndarray  # (c, s, s); level 0: (3, H, W) pixels in [-1, 1] (or the VAE latent)
    made_by: str  # what produced this latent, with fingerprints


def sample_chain(cfg: Config, plan: dict[str, Stage], sample_id: str) -> tuple[list[Link], str, np.ndarray]:
    """(links, title, image) of sample `sample_id` (its index in the samples artifact): each level's latent and
    how it was made, and the image."""
    samples = plan["samples"].artifact.require()
    key = f"{int(sample_id):07d}"
    for s in raw_samples(samples):
        if s["__key__"] == key:
            break
    else:
        raise ValueError(f"sample {sample_id}: not in the samples artifact {samples}")
    links = []
    for level in range(cfg.num_levels):
        z = decode_npy(s[f"level_{level}.npy"], f"level_{level}.npy")
        links.append(Link(level, z, f"sampled by level_{level}_model {plan[f'level_{level}_model'].fingerprint}"))
    image = np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB"))
    return links, f"sample {sample_id} of samples {plan['samples'].fingerprint}", image


def variation_chain(cfg: Config, plan: dict[str, Stage], vid: str) -> tuple[list[Link], str, np.ndarray]:
    """The same for variation `vid`: the kept levels are the source's real latents, the rest were sampled."""
    latents, info = variation_latents(plan["variations"].artifact.require(), vid)
    column, _, row = vid.split("/")
    kept = [] if column == "none" else list(range(int(column.split("..")[0][1:]), cfg.num_levels))
    source = info["sources"][int(row)]
    links = [Link(level, latents[level],
                  f"real latent of {source} (level_{level}_latents {plan[f'level_{level}_latents'].fingerprint})"
                  if level in kept else
                  f"sampled by level_{level}_model {plan[f'level_{level}_model'].fingerprint}")
             for level in range(cfg.num_levels)]
    image = to_uint8(decode_level0(cfg, torch.from_numpy(latents[0])[None]))[0]
    return links, f"variation {vid} of {source} (variations {plan['variations'].fingerprint})", image


def image_chain(cfg: Config, plan: dict[str, Stage], path: Path) -> tuple[list[Link], str, np.ndarray]:
    """The same for an image file: its latents as the latents stage would encode it."""
    small, large = prepare_image(Path(path).read_bytes(), cfg.dataset)
    encoded = encode_images(cfg, plan, large[None], small[None])
    pixels = small.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    space = level_kind(cfg, 0)
    level0 = pixels if space.is_pixels else space.encode(cfg, torch.from_numpy(pixels)[None])[0].numpy()
    links = [Link(0, level0, f"the image {Path(path).name}" + ("" if space.is_pixels else
                                                               f", encoded by the VAE {cfg.level0.vae}"))]
    links += [Link(level, encoded[level][0].numpy(), f"encoded as level_{level}_latents "
                   f"{plan[f'level_{level}_latents'].fingerprint} are: {level_kind(cfg, level).made_from(cfg, plan, level)}")
              for level in range(1, cfg.num_levels)]
    return links, f"image {path}", small


def neighbours_of(cfg: Config, plan: dict[str, Stage], links: list[Link], k: int) -> dict[int, list[str]]:
    """Each link's k nearest training images (manifest ids) in its level's space (level 0: its data's), the space
    streamed block by block (knn.RunningNearest): the training set is never held whole."""
    out = {}
    for link in links:
        if link.level == 0:  # in level 0's own space: pixels, or the VAE latents of level_0_latents
            stream = level_kind(cfg, 0).stream(cfg, plan, "train")
        else:
            stream = iter_latent_samples(plan[f"level_{link.level}_latents"].artifact.require(), "train")
        top = RunningNearest(link.latent.reshape(1, -1), k)
        for keys, block in blocks(stream):
            top.update(block, keys)
        out[link.level] = top.result()[0]
    return out


def draw(cfg: Config, plan: dict[str, Stage], links: list[Link], found: dict[int, list[str]], image: np.ndarray,
         title: str, path: Path, k: int) -> None:
    wanted = {key for keys in found.values() for key in keys}
    train = {key: x for key, x, _ in iter_pixels(plan["images"].artifact.require()) if key in wanted}
    size = image.shape[0]
    rows, labels = [], []
    for link in sorted(links, key=lambda link: -link.level):
        first = image if link.level == 0 else latent_tile(link.latent, size)
        near = [to_uint8(torch.from_numpy(train[key])[None])[0] for key in found.get(link.level, [])]
        rows.append([first] + near + [np.full_like(image, 255)] * (k - len(near)))
        labels.append("image" if link.level == 0 else f"z{link.level}")
    labelled_grid(rows, path, title, [("latent", 1), (f"{k} nearest training images at its level", k)], labels)


def lineage(cfg: Config, plan: dict[str, Stage], target: str, k: int = 5, out: Path | None = None) -> dict:
    """Trace `target` (a sample index, a variation id or an image file); print it, draw it, return it."""
    if Path(target).is_file():
        links, title, image = image_chain(cfg, plan, Path(target))
    elif "/" in target:
        links, title, image = variation_chain(cfg, plan, target)
    elif target.isdigit():
        links, title, image = sample_chain(cfg, plan, target)
    else:
        raise ValueError(f"{target!r}: give a sample index (e.g. 12), a variation id (e.g. z2/seed0/3) or an image file")
    found = neighbours_of(cfg, plan, links, k)
    m = read_manifest(plan["images"].artifact.require())
    name = dict(zip(m.column("id").to_pylist(), m.column("source").to_pylist()))
    print(title)
    for link in sorted(links, key=lambda link: -link.level):
        what = "pixels" if link.level == 0 else f"z{link.level}"
        print(f"  {what:<6} {'x'.join(map(str, link.latent.shape)):<9} {link.made_by}")
        if link.level in found:
            print(f"         nearest training images: {', '.join(f'{key} ({name[key]})' for key in found[link.level])}")
    out = Path(out or f"lineage-{target.replace('/', '_').replace('.', '_')}.png")
    draw(cfg, plan, links, found, image, title, out, k)
    print(f"picture: {out}")
    return {"title": title, "made_by": {link.level: link.made_by for link in links}, "neighbours": found,
            "picture": str(out)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", help="a sample index, a variation id ('<column>/seed<m>/<row>') or an image file")
    ap.add_argument("--config", help="experiment YAML (default: $NESTED_CONFIG)")
    ap.add_argument("--home", help="artifact root (default: $NESTED_HOME or .nested/)")
    ap.add_argument("-k", type=int, default=5, help="nearest training images per level")
    ap.add_argument("--out", type=Path, help="the picture (default: lineage-<target>.png)")
    args = ap.parse_args(argv)
    cfg = load_config(args.config)
    plan = build_plan(cfg, Path(args.home) if args.home else nested_home())
    try:
        lineage(cfg, plan, args.target, args.k, args.out)
    except (ValueError, FileNotFoundError, ArtifactDamaged) as e:
        raise SystemExit(f"lineage: {e}") from None


if __name__ == "__main__":
    main()
