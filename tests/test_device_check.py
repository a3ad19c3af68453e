"""benchmarks/device_check.sh end to end on the CPU at its tiny budget (TINY=1): every
command the GPU call runs, on a generated CIFAR-10 archive and a wheel folder made here,
so that a lease fails only for what the GPU brings. Needs bash, tar and pip; no network."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")


def cifar_archive(path: Path, train: int = 10, test: int = 3) -> None:
    """A .tar.gz of cifar10/{train,test}/<class>/NNNN.jpg, as ../shared/data's archive."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        for split, count in (("train", train), ("test", test)):
            for k, name in enumerate(CLASSES):
                for i in range(count):
                    pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) + np.uint8(18 * k)  # a colour a class
                    file = path.parent / "image.jpg"
                    Image.fromarray(pixels).save(file, quality=90)
                    tar.add(file, f"cifar10/{split}/{name}/{i:04d}.jpg")


def wheel_folder(folder: Path) -> str:
    """A folder as device_wheels.sh leaves it: one pure-Python wheel (written by hand: no
    build backend, no network) and requirements.txt naming it. Returns its module's name."""
    folder.mkdir()
    name, version = "ccl_device_probe", "1.0"
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}.py": b"READY = True\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{dist}/RECORD,,"]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, data in files.items():
            whl.writestr(path, data)
        whl.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    (folder / "requirements.txt").write_text(f"{name}=={version}\n")
    return name


def test_device_check_runs_every_step_at_a_tiny_budget(tmp_path):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    cifar_archive(archive)
    probe = wheel_folder(tmp_path / "wheels")
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "TINY": "1", "PYTHON": sys.executable, "WHEELS": str(tmp_path / "wheels"),
           "WORK": str(work), "BUDGET": "1500", "MAMMOTH": "er der++"}
    env.pop("PYTHONPATH", None)  # the script finds its own tree's ccl, as on a machine with none installed
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(archive), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = {}
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, _ = line.split("\t")
        steps[name] = int(status)
    expected = {"install", "unpack", "versions", "data", "mammoth-er", "mammoth-der++", "cuda-tests", "suite",
                "summary", "pad-ipc10", "eval-pad-ipc10"}
    expected |= {f"{kind}{method}-ipc{ipc}" for kind in ("", "eval-") for method in ("datadam", "random")
                 for ipc in (1, 10)}
    logs = work / "logs"
    failed = {n: (logs / f"{n}.log").read_text()[-1500:] for n, s in steps.items() if s != 0}
    assert not failed, failed
    assert set(steps) == expected
    assert "skipped" in (logs / "cuda-tests.log").read_text()  # collected (else pytest exits 5), and no GPU here
    assert (work / "site" / f"{probe}.py").is_file()  # installed from the folder, offline
    for name in ("device.txt", "steps.tsv", "runs.json", "sets.json", "pytest.log", "logs.tar.gz"):
        assert (out / name).stat().st_size > 0, name
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back
    assert "avalanche" in (out / "device.txt").read_text()
    runs = json.loads((out / "runs.json").read_text())
    assert sorted(r["config"]["run"]["strategy"] for r in runs.values()) == ["der++", "er"]
    assert all(len(r["accuracy_matrix"]) == 5 for r in runs.values())  # every experience of Seq-CIFAR-10
    sets = json.loads((out / "sets.json").read_text())
    assert set(sets) == {"datadam-ipc1", "datadam-ipc10", "random-ipc1", "random-ipc10", "pad-ipc10"}
    assert all(s["evaluation"]["accuracies"] for s in sets.values())
    pad = sets["pad-ipc10"]["stats"]
    assert pad["iterations"] >= 1 and not pad["experts_cached"] and (work / "pad-experts.pt").is_file()
