"""`python -m assets.gc` (pipeline/gc.py): what it keeps (the configs' plans, recent materializations, whatever a running build
holds), what it lists as removable with its size, and that only --delete removes anything.

The home is the tiny config's plan with a small stand-in artifact at every path (building the real ones is
test_assets' business): the rules read only directory names, markers and locks.
"""
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from assets.gc import main as gc_command
from pipeline import gc
from pipeline.cache import MARKER, Artifact, human_bytes, tree_bytes
from pipeline.config import PROJECT_ROOT
from pipeline.plan import build_plan

TINY = PROJECT_ROOT / "configs" / "tiny.yaml"
ORPHAN = "0123456789abcdef"


def stand_in(home: Path, kind: str, fingerprint: str, nbytes: int = 10) -> Artifact:
    """A complete artifact holding one file of `nbytes` bytes."""
    art = Artifact(home, kind, fingerprint)
    with art.build() as (tmp, _):
        (tmp / "data.bin").write_bytes(b"x" * nbytes)
    return art


def line_of(out: str, name: str) -> str:
    """The line of gc's listing that names `name`."""
    (line,) = [line for line in out.splitlines() if f" {name} " in line]
    return line


def snapshot(home: Path) -> dict[str, int]:
    return {p.relative_to(home).as_posix(): p.stat().st_size for p in home.rglob("*") if p.is_file()}


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_cfg):
    """A home with (a stand-in of) every artifact of configs/tiny.yaml; no instance and no other config."""
    home = tmp_path / "nested_home"
    monkeypatch.setenv("NESTED_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "no_instance"))
    monkeypatch.delenv("NESTED_CONFIG", raising=False)
    plan = build_plan(tiny_cfg, home)
    for stage in plan.values():
        stand_in(home, stage.kind, stage.fingerprint)
    return home, plan


@contextmanager
def lock_held_elsewhere(art: Artifact):
    """Another process holds the artifact's build lock, as a running build does, until the block ends."""
    art.lock_path.parent.mkdir(parents=True, exist_ok=True)
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
            "os.pwrite(fd, ('{\"pid\": %d, \"host\": \"elsewhere\", \"since\": \"now\"}' % os.getpid()).encode(), 0); "
            "print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code, str(art.lock_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.stdin.close()  # the holder exits at end of input; the kernel releases its lock
        proc.wait(30)


def test_keeps_what_configs_and_recent_materializations_refer_to(home):
    home, plan = home
    orphan = stand_in(home, "models", ORPHAN, 3000)
    recent = stand_in(home, "samples", "fedcba9876543210")
    ref = gc.referenced([TINY], home)
    assert set(ref.paths) == {st.path for st in plan.values()} and ref.planned == [str(TINY)] and not ref.unplanned

    items, unknown = gc.survey(home, gc.Keep(ref.paths, gc.Recent(fingerprints={recent.fingerprint: "samples, now"})))
    state = {it.entry.path: it.state for it in items}
    assert state == {**{st.path: gc.IN_USE for st in plan.values()}, recent.path: gc.KEPT, orphan.path: gc.REMOVABLE}
    assert not unknown
    assert {it.entry.path for it in gc.orphans(home, gc.Keep(ref.paths))} == {orphan.path, recent.path}
    size = next(it.bytes for it in items if it.entry.path == orphan.path)
    assert size == 3000 + (orphan.path / MARKER).stat().st_size == tree_bytes(orphan.path)


def test_dry_run_lists_orphans_with_sizes_and_deletes_nothing(home, capsys):
    home, plan = home
    orphan = stand_in(home, "models", ORPHAN, 3000)
    (home / "models" / "notes.txt").write_text("mine")  # not the cache's: left alone
    before = snapshot(home)
    assert gc_command([str(TINY)]) == 0
    out = capsys.readouterr().out
    size = human_bytes(tree_bytes(orphan.path))
    assert f"{size}  models/{ORPHAN}" in out and "dry run: nothing removed" in out
    assert f"total: {size} in 1 directories" in out
    assert f"in use: {len(plan)} artifacts" in out and "left alone, not the cache's (1): models/notes.txt" in out
    assert snapshot(home) == before

    assert gc_command([str(TINY), "--delete"]) == 0
    assert not orphan.path.exists() and (home / "models" / "notes.txt").is_file()
    assert all(st.artifact.is_complete() for st in plan.values())
    assert gc_command([str(TINY)]) == 0 and "nothing to remove" in capsys.readouterr().out


def test_never_removes_what_a_running_build_holds(home, capsys):
    home, plan = home
    held = stand_in(home, "models", ORPHAN, 100)
    models = home / "models"
    unbuilt = plan["level_2_model"]  # the config asks for it, a killed training left its checkpoints
    shutil.rmtree(unbuilt.path)
    resumable = models / f"{unbuilt.fingerprint}.work"
    stale_tmp = models / "1111111111111111.tmp-999999999-dead00"  # a pid that does not exist
    held_tmp = models / "2222222222222222.tmp-999999999-beef00"  # its fingerprint's lock is held
    held_work = models / "3333333333333333.work"  # a training that holds its lock
    orphan_work = models / "4444444444444444.work"
    published_work = models / f"{plan['level_0_model'].fingerprint}.work"  # the model is published
    damaged = models / "8888888888888888.damaged-20250101T000000"
    incomplete = models / "6666666666666666"  # no marker
    for d in (resumable, stale_tmp, held_tmp, held_work, orphan_work, published_work, damaged, incomplete):
        d.mkdir()
        (d / "f").write_bytes(b"y" * 50)
    removable = {stale_tmp, orphan_work, published_work, damaged, incomplete}

    with lock_held_elsewhere(held) as holder, lock_held_elsewhere(Artifact(home, "models", "2222222222222222")), \
            Artifact(home, "models", "3333333333333333").lock():  # held in this process, as a training holds it
        alive_tmp = models / f"7777777777777777.tmp-{holder.pid}-cafe00"  # its builder is alive
        alive_tmp.mkdir()
        items, _ = gc.survey(home, gc.Keep(gc.referenced([TINY], home).paths))
        state = {it.entry.path: (it.state, it.why) for it in items if it.entry.path.parent == models}
        kept = {p for p, (s, _) in state.items() if s == gc.KEPT}
        assert kept == {held.path, held_tmp, held_work, alive_tmp}
        assert f"pid {holder.pid} on elsewhere" in state[held.path][1]
        assert state[resumable][0] == gc.IN_USE
        assert {p for p, (s, _) in state.items() if s == gc.REMOVABLE} == removable

        # The command: a dry run says what each is; --delete removes the removable ones and nothing held.
        assert gc_command([str(TINY)]) == 0
        out = capsys.readouterr().out
        for name, says in ((f"models/{ORPHAN}", "artifact: held: its lock is taken"),
                           ("models/3333333333333333.work", "training checkpoints: held"),
                           (f"models/{alive_tmp.name}", "temporary build: being built"),
                           (f"models/{stale_tmp.name}", "temporary build: its process is gone"),
                           (f"models/{damaged.name}", "damaged copy: set aside"),
                           (f"models/{published_work.name}", "training checkpoints: of a model that is published"),
                           ("models/6666666666666666", "incomplete artifact: no completion marker")):
            assert says in line_of(out, name), (name, says)
        assert f"models/{resumable.name}" not in out  # in use: counted, not listed
        assert gc_command([str(TINY), "--delete"]) == 0
        assert all(p.exists() for p in kept | {resumable}) and held.is_complete()
        assert not any(p.exists() for p in removable)
    # Released (and the builder gone): the orphan artifact, the temporary builds and the checkpoints go.
    assert gc_command([str(TINY), "--delete"]) == 0
    assert not any(p.exists() for p in (held.path, held_tmp, held_work, alive_tmp)) and resumable.exists()
    assert all(st.artifact.is_complete() for st in plan.values() if st is not unbuilt)


def test_removal_rechecks_the_lock(home):
    home, _ = home
    orphan = stand_in(home, "models", ORPHAN)
    (item,) = gc.orphans(home, gc.Keep(gc.referenced([TINY], home).paths))
    with lock_held_elsewhere(orphan):  # a build started after the survey
        assert gc.remove([item], log=lambda _: None) == []
    assert orphan.is_complete()
    assert gc.remove([item], log=lambda _: None) == [item] and not orphan.path.exists()


def test_a_config_that_cannot_be_planned_is_reported_and_protects_what_may_be_its(home, tmp_path, capsys):
    home, plan = home
    orphan = stand_in(home, "models", ORPHAN)
    data = yaml.safe_load(TINY.read_text())
    data.update(name="paper", dataset={**data["dataset"], "source": "folder", "path": str(tmp_path / "not_here")})
    paper = tmp_path / "paper.yaml"
    paper.write_text(yaml.safe_dump(data))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\nlevels: 3\n")  # refused at load

    ref = gc.referenced([TINY, paper, broken], home)
    assert [u.name for u in ref.unplanned] == ["paper", "broken"] and not any(u.evidence for u in ref.unplanned)
    assert "not_here" in ref.unplanned[0].reason
    assert gc_command([str(TINY), str(paper), str(broken)]) == 0
    captured = capsys.readouterr()
    assert "paper.yaml ('paper') could not be planned" in captured.err and "no sign of its artifacts" in captured.err
    assert f"models/{ORPHAN}" in captured.out  # no sign that it ran here: the orphan stays removable

    # A training run file under its name is a sign that it ran here: every orphan is kept, and the output says why.
    run_configs = home / "run_configs"
    run_configs.mkdir()
    (run_configs / "paper-0000.json").write_text('{"config": {"name": "paper"}, "plan": {}}')
    assert gc_command([str(TINY), str(paper), "--delete"]) == 0
    captured = capsys.readouterr()
    assert "may have artifacts here (run file run_configs/paper-0000.json)" in captured.err
    assert "may belong to 'paper', which could not be planned" in captured.out and orphan.is_complete()
    assert "nothing to remove" in captured.out
    # Named alone, the configs to keep decide: the paper config is not consulted.
    assert gc_command([str(TINY), "--delete"]) == 0 and not orphan.path.exists()


def test_recent_materializations_in_the_instance_are_kept(home, tmp_path, monkeypatch, capsys):
    from dagster import AssetMaterialization, DagsterInstance, MetadataValue

    from assets.gc_instance import recent_references

    home, _ = home
    orphan = stand_in(home, "samples", ORPHAN, 500)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with DagsterInstance.get() as instance:
        instance.report_runless_asset_event(AssetMaterialization(
            "samples", metadata={"fingerprint": ORPHAN, "path": MetadataValue.path(str(orphan.path))}))
    recent = recent_references(time.time() - 3600)
    assert recent.error is None and recent.fingerprints.keys() == {ORPHAN} and orphan.path in recent.paths
    assert "1 since" in recent.source
    assert recent_references(time.time() + 60).fingerprints == {}  # older than the window: not protected

    assert gc_command([str(TINY), "--delete"]) == 0
    out = capsys.readouterr().out
    assert "recent materialization (samples," in out and orphan.is_complete()
    assert gc_command([str(TINY), "--delete", "--keep-days", "0"]) == 0 and not orphan.path.exists()


def test_an_unreadable_instance_stops_deletion(home, tmp_path, monkeypatch, capsys):
    home, _ = home
    orphan = stand_in(home, "models", ORPHAN)
    monkeypatch.setattr(gc, "recent_materializations",
                        lambda days, read: gc.Recent(source="the instance at X", error="OperationalError: no such server"))
    assert gc_command([str(TINY), "--delete"]) == 2
    assert "refusing to delete" in capsys.readouterr().err and orphan.is_complete()
    assert gc_command([str(TINY)]) == 0  # a dry run still lists, with the warning


def test_without_a_reader_of_the_instance_nothing_is_deleted(home, capsys):
    """pipeline.gc knows no orchestrator: run without the asset layer's reader (assets/gc.py hands it one), it may
    list but never deletes what a recent materialization could refer to."""
    home, _ = home
    orphan = stand_in(home, "models", ORPHAN)
    assert gc.main([str(TINY), "--delete"]) == 2
    assert "python -m assets.gc" in capsys.readouterr().err and orphan.is_complete()
    assert gc.main([str(TINY), "--delete", "--keep-days", "0"]) == 0 and not orphan.path.exists()
