"""What under $NESTED_HOME no experiment refers to any more, and removing it.

    python -m assets.gc [CONFIG ...] [--delete] [--keep-days N]      (`make gc`: a dry run on configs/)

Kept: every artifact the plan of a config refers to (the CONFIGs given; by default every ``configs/*.yaml`` and
$NESTED_CONFIG), each config's sweep variants included; every artifact a materialization of the last N days
(default 30) refers to, by its `fingerprint` (or `path`) metadata; and whatever a running build holds: a
fingerprint whose lock is held, a temporary build whose process is alive. Removable: complete artifacts nothing
refers to, incomplete ones (never trusted), temporary builds of killed processes, damaged copies set aside, and
training checkpoints (``<fingerprint>.work``) of models that are published or that nothing asks for. A dry run
lists them with their sizes; ``--delete`` removes each under its fingerprint's lock (a build that starts
meanwhile waits, then rebuilds). Lock files, run files, the evaluation table and the source-hash cache are never
touched.

A config that cannot be planned (its data or weights are not on this machine) is reported, not fatal. Its
artifacts cannot be told from orphans without its fingerprints, so when there is a sign that it ran on this home
(a run file under its name, features of its encoder), every orphan artifact and checkpoint is kept and the
output says why; without such a sign its artifacts are taken not to be here, and the output says that.

Why the code is split this way: the rules are plain functions over the artifact root (`referenced`, `survey`,
`orphans`, `remove`), tested without the orchestrator. Materializations are the orchestrator's records, so the
asset layer reads them (``assets/gc_instance.py``) and runs the command (``assets/gc.py``), handing `main` its
reader: ``pipeline/`` never imports the Dagster layer.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import yaml

from .cache import FINGERPRINT_PATTERN, MARKER, Artifact, build_abandoned, human_bytes, tree_bytes
from .config import PROJECT_ROOT, load_config, nested_home, variant_configs
from .plan import build_plan
from .schema import Config
from .stages import STAGE_KINDS

ARTIFACT, INCOMPLETE, TMP, WORK, DAMAGED = ("artifact", "incomplete artifact", "temporary build",
                                            "training checkpoints", "damaged copy")
# <fingerprint>, <fingerprint>.tmp-<pid>-<hex>, <fingerprint>.work, <fingerprint>.damaged-<time>
ENTRY = re.compile(rf"(?P<fp>{FINGERPRINT_PATTERN})(?:(?P<tmp>\.tmp-\d+-[0-9a-z]+)|(?P<work>\.work)|(?P<damaged>\.damaged-.+))?")
DAY = 86400.0


@dataclass(frozen=True)
class Entry:
    """One directory of the cache: `<home>/<kind>/<name>`."""
    path: Path
    kind: str  # the artifact folder: images, models, ...
    fingerprint: str
    what: str  # ARTIFACT, INCOMPLETE, TMP, WORK or DAMAGED

    @property
    def artifact(self) -> Artifact:
        return Artifact(self.path.parent.parent, self.kind, self.fingerprint)

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.path.name}"


IN_USE, KEPT, REMOVABLE = "in use", "kept", "removable"


@dataclass(frozen=True)
class Item:
    """An entry and what gc makes of it: IN_USE (a config's plan refers to it), KEPT (a recent materialization
    refers to it, a build holds it, or an unplanned config may own it) or REMOVABLE, and why."""
    entry: Entry
    state: str
    why: str
    bytes: int

    @property
    def removable(self) -> bool:
        return self.state == REMOVABLE


@dataclass(frozen=True)
class Unplanned:
    """A config (or one of its variants) whose plan could not be built here, and signs that it ran here anyway."""
    config: Path
    name: str | None
    reason: str
    evidence: tuple[str, ...] = ()


@dataclass
class Recent:
    """What recent materializations refer to: fingerprint (or artifact path) -> which asset, when."""
    fingerprints: dict[str, str] = field(default_factory=dict)
    paths: dict[Path, str] = field(default_factory=dict)
    source: str = "not consulted"
    error: str | None = None  # the records exist but could not be read


@dataclass
class Keep:
    """Everything that protects an entry from removal."""
    paths: dict[Path, str] = field(default_factory=dict)  # artifact directory -> the config that refers to it
    recent: Recent = field(default_factory=Recent)
    hold_all: str | None = None  # keep every orphan artifact and checkpoint, and why (an unplanned config's)


def kinds() -> list[str]:
    """The artifact folders: every stage kind (the folders' names are the plan's kinds)."""
    return sorted(kind.name for kind in STAGE_KINDS)


def default_configs() -> list[Path]:
    """Every config of the checkout, and $NESTED_CONFIG (the experiment `make run` uses) wherever it lies."""
    configs = sorted((PROJECT_ROOT / "configs").glob("*.y*ml"))
    if env := os.environ.get("NESTED_CONFIG"):
        path = Path(env) if Path(env).is_absolute() or Path(env).exists() else PROJECT_ROOT / env
        if path.resolve() not in {c.resolve() for c in configs}:
            configs.append(path)
    return configs


def _config_name(path: Path) -> str | None:
    """The experiment name a YAML declares, read without validating it (for a config that does not load)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
        return str(data.get("name", "experiment")) if isinstance(data, dict) else None
    except Exception:
        return None


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}".rstrip(": ")


@dataclass
class Referenced:
    paths: dict[Path, str]  # artifact directory -> the first config (or variant) whose plan refers to it
    planned: list[str]  # the configs and variants planned
    unplanned: list[Unplanned]


def referenced(configs: Iterable[Path], home: Path) -> Referenced:
    """Every artifact directory the configs' plans (their variants' included) refer to; and the configs or
    variants that could not be planned, with the signs that they ran on this home."""
    paths: dict[Path, str] = {}
    planned: list[str] = []
    unplanned: list[Unplanned] = []
    for config in configs:
        config = Path(config)
        try:
            cfg = load_config(config, check_files=False)
            experiments = [(str(config), cfg), *((f"{config} variant {v}", vc) for v, vc in
                                                  variant_configs(cfg, check_files=False).items())]
        except Exception as e:  # a YAML that does not load at all
            name = _config_name(config)
            unplanned.append(Unplanned(config, name, _why(e), tuple(evidence(home, name, None))))
            continue
        for label, ecfg in experiments:
            try:
                plan = build_plan(ecfg, home)
            except Exception as e:  # typically the data or a checkpoint is not on this machine
                unplanned.append(Unplanned(config, ecfg.name, _why(e), tuple(evidence(home, ecfg.name, ecfg))))
                continue
            planned.append(label)
            for stage in plan.values():
                paths.setdefault(stage.path, label)
    return Referenced(paths, planned, unplanned)


def evidence(home: Path, name: str | None, cfg: Config | None) -> list[str]:
    """Signs that the experiment `name` (its variants included) built artifacts under `home`: a training run
    file under its name, features of its encoder (same model, layer, input size)."""
    found = []
    if name:
        for run in sorted((home / "run_configs").glob("*.json")):
            try:
                ran = json.loads(run.read_text())["config"]["name"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if ran == name or ran.startswith(f"{name}/"):
                found.append(f"run file run_configs/{run.name}")
    if cfg is not None:
        want = {"encoder": cfg.encoder.name, "layer": cfg.encoder.layer, "input_size": cfg.encoder.input_size}
        for marker in sorted((home / "features").glob(f"*/{MARKER}")):
            try:
                meta = json.loads(marker.read_text())
            except (OSError, ValueError):
                continue
            if all(meta.get(k) == v for k, v in want.items()):
                found.append(f"features/{marker.parent.name} ({cfg.encoder.name}, {cfg.encoder.layer}, "
                             f"{cfg.encoder.input_size} px)")
    return found


def entries(home: Path) -> tuple[list[Entry], list[Path]]:
    """Every directory of every artifact folder, classified; and what is there but not the cache's (left alone)."""
    out, unknown = [], []
    for kind in kinds():
        folder = home / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            m = ENTRY.fullmatch(path.name)
            if m is None or not path.is_dir() or path.is_symlink():
                unknown.append(path)
                continue
            what = (TMP if m["tmp"] else WORK if m["work"] else DAMAGED if m["damaged"]
                    else ARTIFACT if (path / MARKER).is_file() else INCOMPLETE)
            out.append(Entry(path, kind, m["fp"], what))
    return out, unknown


def _holder(art: Artifact) -> str:
    try:
        h = json.loads(art.lock_holder())
        return f"pid {h['pid']} on {h['host']} since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


def judge(entry: Entry, keep: Keep) -> tuple[str, str]:
    """(state, why) of one entry: IN_USE, KEPT or REMOVABLE."""
    art = entry.artifact
    if art.lock_held():
        return KEPT, f"held: its lock is taken ({_holder(art)})"
    config = keep.paths.get(art.path)
    recent = keep.recent.paths.get(art.path) or keep.recent.fingerprints.get(entry.fingerprint)
    if entry.what == ARTIFACT:
        if config:
            return IN_USE, config
        if recent:
            return KEPT, f"recent materialization ({recent})"
        if keep.hold_all:
            return KEPT, keep.hold_all
        return REMOVABLE, "no config and no recent materialization refers to it"
    if entry.what == INCOMPLETE:
        return REMOVABLE, "no completion marker: never trusted, a build replaces it"
    if entry.what == TMP:
        if not build_abandoned(entry.path, mine_abandoned=False):
            return KEPT, f"being built: its process {entry.path.name.split('.tmp-')[1].split('-')[0]} is alive"
        return REMOVABLE, "its process is gone: never trusted"
    if entry.what == DAMAGED:
        return REMOVABLE, "set aside for inspection when found damaged (the artifact is rebuilt from scratch)"
    # WORK: a model's training checkpoints, for a killed training to resume from
    if art.is_complete():
        return REMOVABLE, "of a model that is published (a training killed after publishing left them)"
    if config:
        return IN_USE, f"resumable, unfinished training of {config}"
    if recent:
        return KEPT, f"resumable, unfinished training ({recent})"
    if keep.hold_all:
        return KEPT, keep.hold_all
    return REMOVABLE, "of an unfinished training that no config asks for"


def survey(home: Path, keep: Keep) -> tuple[list[Item], list[Path]]:
    """Every entry of the cache with its verdict and size; and the paths left alone as not the cache's."""
    found, unknown = entries(home)
    items = []
    for entry in found:
        state, why = judge(entry, keep)
        if entry.what == ARTIFACT and state == IN_USE:
            try:  # the marker's record: no walk over a large artifact's files
                size = entry.artifact.bytes_on_disk()
            except (OSError, ValueError):
                size = tree_bytes(entry.path)
        else:
            size = tree_bytes(entry.path)
        items.append(Item(entry, state, why, size))
    return items, unknown


def orphans(home: Path, keep: Keep) -> list[Item]:
    """What `--delete` removes."""
    return [it for it in survey(home, keep)[0] if it.removable]


def remove(items: Iterable[Item], log: Callable[[str], None] = print) -> list[Item]:
    """Remove each item under its fingerprint's lock, checked again there; returns those removed."""
    removed = []
    for it in items:
        entry = it.entry
        with entry.artifact.try_lock() as taken:
            if not taken:
                log(f"skipped {entry.name}: its lock was taken meanwhile (a build started)")
                continue
            if entry.what == TMP and not build_abandoned(entry.path, mine_abandoned=False):
                log(f"skipped {entry.name}: its process is alive")
                continue
            try:
                if entry.what == ARTIFACT:  # untrusted from here on, even if the removal stops half way
                    (entry.path / MARKER).unlink(missing_ok=True)
                shutil.rmtree(entry.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log(f"could not remove {entry.name}: {_why(e)}")
                continue
        removed.append(it)
    return removed


def hold_all_reason(unplanned: list[Unplanned]) -> str | None:
    signs = [u for u in unplanned if u.evidence]
    if not signs:
        return None
    return "may belong to " + ", ".join(f"'{u.name or u.config}'" for u in signs) + ", which could not be planned"


def recent_materializations(keep_days: float, read: Callable[[float], Recent] | None) -> Recent:
    """What the materializations of the last `keep_days` days refer to, as `read(since)` (the asset layer's
    reader of the orchestrator's records) says."""
    if keep_days <= 0:
        return Recent(source="not consulted (--keep-days 0)")
    if read is None:
        return Recent(source="unavailable", error="no reader of the orchestrator's records: run python -m assets.gc")
    return read(time.time() - keep_days * DAY)


def _table(items: list[Item]) -> list[str]:
    width = max((len(it.entry.name) for it in items), default=0) + 2
    return [f"  {human_bytes(it.bytes):>10}  {it.entry.name:<{width}}{it.entry.what}: {it.why}" for it in items]


def main(argv: list[str] | None = None, read_recent: Callable[[float], Recent] | None = None) -> int:
    """The command (`assets/gc.py` runs it with `read_recent`, the reader of the instance's materializations)."""
    ap = argparse.ArgumentParser(prog="python -m assets.gc", description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="*", type=Path,
                    help="the experiments whose artifacts to keep (default: configs/*.yaml and $NESTED_CONFIG)")
    ap.add_argument("--delete", action="store_true", help="remove what is listed as removable (default: dry run)")
    ap.add_argument("--keep-days", type=float, default=30.0, metavar="N",
                    help="also keep what materializations of the last N days refer to (default 30; 0: ignore them)")
    args = ap.parse_args(argv)
    home = nested_home()
    if not home.is_dir():
        print(f"nothing to collect: {home} does not exist")
        return 0
    configs = args.configs or default_configs()
    ref = referenced(configs, home)
    recent = recent_materializations(args.keep_days, read_recent)
    keep = Keep(ref.paths, recent, hold_all_reason(ref.unplanned))

    print(f"artifacts under {home}")
    print(f"  configs: {len(configs)} ({len(ref.planned)} experiments planned, variants included)")
    print(f"  recent materializations: {recent.source}")
    for u in ref.unplanned:
        head = f"{u.config}" + (f" ('{u.name}')" if u.name else "") + f" could not be planned ({u.reason})"
        if u.evidence:
            print(f"warning: {head}, and it may have artifacts here ({'; '.join(u.evidence)}). Its artifacts cannot "
                  "be told from orphans without its plan, so every orphan artifact and training checkpoint is kept. "
                  "To collect them, run gc where it can be planned, or name the configs to keep: "
                  "python -m assets.gc CONFIG ...", file=sys.stderr)
        else:
            print(f"note: {head}; no sign of its artifacts here (no run file under its name, no features of its "
                  "encoder): it does not protect anything", file=sys.stderr)
    if recent.error:
        print(f"warning: recent materializations could not be read: {recent.error}", file=sys.stderr)
        if args.delete:
            print("refusing to delete what they may refer to; --keep-days 0 decides by the configs alone",
                  file=sys.stderr)
            return 2

    items, unknown = survey(home, keep)
    in_use, kept, removable = ([it for it in items if it.state == s] for s in (IN_USE, KEPT, REMOVABLE))
    work = sum(it.entry.what == WORK for it in in_use)
    print(f"  in use: {len(in_use) - work} artifacts" + (f" and {work} unfinished trainings' checkpoints" if work else "")
          + f", {human_bytes(sum(it.bytes for it in in_use))}")
    if kept:
        print(f"\nkept, though no config's plan refers to them ({len(kept)}, {human_bytes(sum(i.bytes for i in kept))}):")
        print("\n".join(_table(kept)))
    if unknown:
        print(f"\nleft alone, not the cache's ({len(unknown)}): " + ", ".join(str(p.relative_to(home)) for p in unknown[:5])
              + (" ..." if len(unknown) > 5 else ""))
    total = sum(it.bytes for it in removable)
    if not removable:
        print("\nnothing to remove")
        return 0
    print(f"\nremovable ({len(removable)}):")
    print("\n".join(_table(removable)))
    if not args.delete:
        print(f"\ntotal: {human_bytes(total)} in {len(removable)} directories "
              "(dry run: nothing removed; --delete removes them)")
        return 0
    done = remove(removable)
    print(f"\nremoved {len(done)} of {len(removable)} directories, {human_bytes(sum(it.bytes for it in done))}")
    return 0 if len(done) == len(removable) else 1

