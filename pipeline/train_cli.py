"""Train one level's denoiser by hand: ``python -m pipeline.train_cli --config CFG --level L [--home DIR]``.

The same `pipeline.train.train_level` the ``level_<l>_model`` asset runs, on the experiment's plan; under
``torchrun`` every process runs it as one rank.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .config import load_run_config, nested_home
from .engine import engine_for
from .plan import build_plan
from .train import train_level


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="experiment YAML or resolved JSON (default: $NESTED_CONFIG)")
    ap.add_argument("--level", type=int, required=True)
    ap.add_argument("--home", help="artifact root (default: $NESTED_HOME or .nested/)")
    args = ap.parse_args(argv)
    cfg = load_run_config(args.config)
    if not 0 <= args.level < cfg.num_levels:
        raise SystemExit(f"--level must be in 0..{cfg.num_levels - 1} for '{cfg.name}'")
    train_level(cfg, build_plan(cfg, Path(args.home) if args.home else nested_home()), args.level,
                engine=engine_for(cfg))


if __name__ == "__main__":
    main()
