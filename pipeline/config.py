"""Loading an experiment config: YAML in, a validated Config out, refused early with the field and the reason.

The schema is pipeline/schema.py's; this module reads the YAML, resolves paths, applies a sweep's overrides
(`variants`), checks the config against the world (the encoder's feature grid, files on disk) and says where
artifacts live (`nested_home`). ``python -m pipeline.config FILE`` checks a file.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

from models.denoiser import get_backbone
from models.encoder import probe_features, resolve_weights
from models.weights import is_local_file

from .level_kinds import level_kind
from .schema import Config

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "emoji.yaml"
# Values a config may expand to once its YAML aliases are copied out (variants edit copies): a real config has
# a few hundred; nested aliases (a "billion laughs") would otherwise take the machine's memory before validation.
MAX_CONFIG_VALUES = 100_000


class ConfigError(ValueError):
    """A config value was refused; the message names the field and the reason."""


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in e["loc"]).replace(".[", "[")
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)  # Config's own validators name their fields
    return f"invalid config {source}:\n  " + "\n  ".join(lines)


def _resolve_paths(cfg: Config) -> Config:
    """Expand env vars and make relative paths relative to the project root (not the cwd of whoever runs it)."""
    def fix(p):
        if p is None:
            return None
        p = Path(os.path.expandvars(str(p))).expanduser()
        return p if p.is_absolute() else PROJECT_ROOT / p

    dataset = cfg.dataset.model_copy(update={"path": fix(cfg.dataset.path)})
    enc = cfg.encoder
    if is_local_file(enc.weights):
        enc = enc.model_copy(update={"weights": str(fix(enc.weights))})
    sampling = cfg.sampling.model_copy(update={"inception_weights": fix(cfg.sampling.inception_weights),
                                               "reference_npz": fix(cfg.sampling.reference_npz)})
    variations = cfg.variations.model_copy(update={"folder": fix(cfg.variations.folder)})
    level0 = cfg.level0
    if level0.vae is not None:  # a local folder (env vars expanded) if there is one, else a hub id as spelled
        local = fix(level0.vae)
        level0 = level0.model_copy(update={"vae": str(local) if local.is_dir() else os.path.expandvars(level0.vae)})
    return cfg.model_copy(update={"dataset": dataset, "encoder": enc, "sampling": sampling, "variations": variations,
                                  "level0": level0})


def check_against_world(cfg: Config, check_files: bool = True) -> None:
    """Checks that need the encoder's architecture (no weights needed) and, unless told not to, the files."""
    ds, enc = cfg.dataset, cfg.encoder
    if check_files:
        if ds.path is not None and not ds.path.exists():
            raise ConfigError(f"dataset.path: file not found: {ds.path}")
        try:
            resolve_weights(enc.weights)
        except FileNotFoundError as e:
            raise ConfigError(f"encoder.weights: {e}") from None
        inc = cfg.sampling.inception_weights
        if inc is not None and not inc.is_file():
            raise ConfigError(f"sampling.inception_weights: file not found: {inc}")
        npz = cfg.sampling.reference_npz
        if npz is not None and not npz.is_file():
            raise ConfigError(f"sampling.reference_npz: file not found: {npz}")
        folder = cfg.variations.folder
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"variations.folder: not a folder: {folder}")
        vae = cfg.level0.vae
        if cfg.level0.space == "vae" and ("$" in vae or (vae.startswith(("/", ".", "~")) and not Path(vae).is_dir())):
            raise ConfigError(f"level0.vae: {vae} is neither a local AutoencoderKL folder nor a hub id "
                              f"(an environment variable unset?)")
    try:
        h, w, c = probe_features(enc.name, enc.layer, enc.input_size)
    except ValueError as e:
        field = "encoder.layer" if "layer" in str(e) else "encoder.name"
        raise ConfigError(f"{field}: {e}") from None
    for name, tc in [("level0.train", cfg.level0.train)] + [(f"levels[{i}].train", lv.train) for i, lv in enumerate(cfg.levels)]:
        sizes = get_backbone(tc.backbone).sizes
        if tc.size not in sizes:
            raise ConfigError(f"{name}.size: unknown {tc.backbone} size '{tc.size}'; choose one of {sorted(sizes)}")
    for i, lv in enumerate(cfg.levels):
        if not level_kind(cfg, i + 1).from_features:
            continue  # made from level 0
        if lv.pool > min(h, w):
            raise ConfigError(f"levels[{i}].pool: {lv.pool} is larger than the encoder's {h}x{w} feature grid "
                              f"({enc.name} {enc.layer} at {enc.input_size} px)")
        if lv.channels > c:
            raise ConfigError(f"levels[{i}].channels: {lv.channels} is more than the encoder's {c} channels "
                              f"({enc.name} {enc.layer})")


def unshared(value, budget: list[int] | None = None):
    """A copy in which no two places are one object. YAML aliases make them one (two levels' `train: *t`, or
    variants sharing an anchor), and copy.deepcopy keeps them one: a dotted key would edit all of them.
    Refused past MAX_CONFIG_VALUES values: aliases nested in aliases expand exponentially."""
    budget = [MAX_CONFIG_VALUES] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        raise ConfigError(f"expands to more than {MAX_CONFIG_VALUES:,} values once its YAML aliases are copied out "
                          f"(aliases nested in aliases?)")
    if isinstance(value, dict):
        return {k: unshared(v, budget) for k, v in value.items()}
    if isinstance(value, list):
        return [unshared(v, budget) for v in value]
    return value


def apply_overrides(data: dict, overrides: dict, budget: list[int] | None = None, where: str = "") -> dict:
    """A copy of `data` with `overrides` applied: a dotted key sets one value (`levels.1.sigma: 0.0`; integers
    index lists), a mapping merges into a mapping (`sampling: {steps: 50}`), anything else replaces (`levels: [...]`).
    Every key is checked before its value is copied out, and the copies share one budget (see `unshared`)."""
    out = copy.deepcopy(data)
    budget = [MAX_CONFIG_VALUES] if budget is None else budget
    for key, value in overrides.items():
        *path, last = str(key).split(".")
        node = out
        try:
            for part in path:
                node = node[int(part)] if isinstance(node, list) else node[part]
            current = node[int(last)] if isinstance(node, list) else node[last]
        except (KeyError, IndexError, ValueError, TypeError):
            raise ConfigError(f"{where}{key}: no such field to override") from None
        if isinstance(node, dict) and isinstance(value, dict) and isinstance(current, dict):  # a list item is replaced
            node[last] = apply_overrides(current, value, budget, f"{where}{key}.")
            continue
        try:
            value = unshared(value, budget)
        except ConfigError as e:
            raise ConfigError(f"{where}{key}: {e}") from None
        node[int(last) if isinstance(node, list) else last] = value
    return out


def variant_configs(cfg: Config, check_files: bool = True) -> dict[str, Config]:
    """Each variant of the sweep as a config of its own, named '<experiment>/<variant>'."""
    base = cfg.model_dump(mode="json", exclude={"variants"})
    out = {}
    for name, overrides in cfg.variants.items():
        try:
            out[name] = parse_config({**apply_overrides(base, overrides), "name": f"{cfg.name}/{name}"}, "", check_files,
                                     guidance_inherited=not _sets_guidance(overrides))
        except ConfigError as e:  # one line per refused field, each under the variant's name
            lines = str(e).removeprefix("invalid config :\n").split("\n")
            raise ConfigError("\n".join(f"variants.{name}: {line.strip()}" for line in lines)) from None
    return out


def _sets_guidance(overrides: dict) -> bool:
    """Whether a variant's overrides set sampling.guidance (directly, or by replacing `sampling` whole)."""
    sampling = overrides.get("sampling")
    return "sampling.guidance" in overrides or (sampling is not None and not (
        isinstance(sampling, dict) and "guidance" not in sampling))


def parse_config(data: dict, source: str = "<dict>", check_files: bool = True, guidance_inherited: bool = False) -> Config:
    try:
        cfg = Config.model_validate(data, context={"guidance_inherited": guidance_inherited})
    except ValidationError as e:
        raise ConfigError(_format(e, source)) from None
    cfg = _resolve_paths(cfg)
    check_against_world(cfg, check_files)
    variant_configs(cfg, check_files)  # a bad variant is refused with the base, naming it
    return cfg


def load_config(path: str | Path | None = None, check_files: bool = True) -> Config:
    """Load the experiment YAML (default: $NESTED_CONFIG, else configs/emoji.yaml)."""
    path = Path(path or os.environ.get("NESTED_CONFIG") or DEFAULT_CONFIG)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # a syntax error, or a tag such as !!python/object that safe_load refuses
        raise ConfigError(f"invalid config {path}: not plain YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {path}: the top level must be a mapping")
    return parse_config(data, str(path), check_files)


def config_from_json(text: str) -> Config:
    """A config that was validated when it was loaded, read back from its JSON dump (a run file). A variant's dump
    may hold its base's guidance weights for more levels than its own (see Config._fits_the_models)."""
    return Config.model_validate_json(text, context={"guidance_inherited": True})


def load_run_config(path: str | Path | None = None) -> Config:
    """The config a training process is given: the resolved JSON the asset wrote from a config validated when
    the code location loaded (read as it is), or an experiment YAML (loaded and validated as load_config does)."""
    if path is not None and str(path).endswith(".json"):
        return config_from_json(Path(path).read_text())
    return load_config(path)


def nested_home() -> Path:
    """Artifact root: $NESTED_HOME, default .nested/ in the checkout. A URL is refused: the stages write with
    local-file libraries and lock with flock, so a cluster mounts a shared filesystem (docs/deploy.md#ray)."""
    home = os.environ.get("NESTED_HOME") or str(PROJECT_ROOT / ".nested")
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", home):
        raise ConfigError(f"NESTED_HOME: {home!r} is a URL; artifacts need a mounted filesystem (a cluster: one "
                          f"shared mount at the same path on every node, see docs/deploy.md#ray)")
    return Path(home).resolve()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Validate an experiment config.")
    ap.add_argument("config", nargs="?", help="YAML path (default: $NESTED_CONFIG or configs/emoji.yaml)")
    ap.add_argument("--no-file-checks", action="store_true", help="skip dataset/weights existence (paper configs)")
    args = ap.parse_args()
    try:
        c = load_config(args.config, check_files=not args.no_file_checks)
    except ConfigError as e:
        raise SystemExit(str(e))
    shapes = ", ".join(f"{lv.pool}x{lv.pool}x{lv.channels} (sigma {lv.sigma})" for lv in c.levels)
    print(f"{c.name}: L = {c.num_levels}; {c.dataset.source} at {c.dataset.resolution} px; {c.encoder.name} "
          f"{c.encoder.layer} at {c.encoder.input_size} px; levels {shapes}")
    for v in variant_configs(c, check_files=not args.no_file_checks).values():
        print(f"  variant {v.name}: L = {v.num_levels}; sigmas {[lv.sigma for lv in v.levels]}")
