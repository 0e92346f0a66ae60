"""The package users install (issue 29, section 5): a wheel and an sdist that hold the recipes, the page and
the data files, pass `twine check`, and run from a fresh environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    work = tmp_path_factory.mktemp("checkout")  # build from a copy: the build leaves build/ and egg-info
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        (work / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "src"), str(work / "src")], check=True)
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(work)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    return out


def test_the_wheel_holds_what_vlret_reads_at_run_time_and_twine_accepts_both(dist):
    wheel = next(dist.glob("*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    recipes = {p.name for p in (ROOT / "src" / "vlret" / "configs").glob("*.yaml")}
    assert {f"vlret/configs/{r}" for r in recipes} <= names
    assert {"vlret/serve/static/index.html", "vlret/data/imagenet_classes.txt"} <= names
    assert any(n.endswith("dist-info/licenses/LICENSE") for n in names)
    assert next(dist.glob("*.tar.gz")).exists()
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", *map(str, dist.iterdir())], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr


def test_the_wheel_runs_from_a_fresh_environment(dist, tmp_path):
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies come from this environment (a path, not its .pth files: not vlret's editable install)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("*.whl"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    vlret = str(env_dir / "bin" / "vlret")

    def run(*args):
        done = subprocess.run([vlret, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    assert run("--version").strip() == "vlret 0.1.0"
    where = subprocess.run(
        [str(python), "-c", "import vlret; print(vlret.__file__)"], capture_output=True, text=True, env=env
    ).stdout
    assert where.startswith(str(env_dir)), where  # the installed wheel, not the source tree
    run("data", "synth", "--out", "synth", "--images", "40")
    run("eval", "--model", "tiny-cnn", "--data", "synth/dataset.json", "--out", "result.json", "--no-cache")
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["counts"]["gallery_items"] > 0
    classes = subprocess.run(
        [str(python), "-c", "from vlret.models.conse import imagenet_classes; print(len(imagenet_classes()))"],
        capture_output=True, text=True, env=env,
    ).stdout  # fmt: skip
    assert classes.strip() == "1000"
