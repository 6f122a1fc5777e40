"""The rotation function's Lambda zip, built as `make lambda-zip` builds it, run as Lambda runs it.

The x86_64 zip is unpacked and run by the Python of the Lambda runtime the
templates name (pyenv's), with nothing but the zip and the standard library on
its path: it imports the handler and performs whole rotations, driven as
Secrets Manager drives them, against the local bed. The arm64 zip cannot run
here; its wheels' tags and its shared libraries' machine are checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from deploy.build_lambda_zip import DEFAULT_PYTHON as LAMBDA_PYTHON
from deploy.build_lambda_zip import HANDLER_MODULE, find_interpreter
from deploy.import_graph import closure, modules
from rotating_pool.rotation import STEPS

# The test bed's package (moto's patches, the stand-ins): never in the zip.
STAND_INS = "rotating_pool.testing"
ROOT = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = ROOT / "deploy" / "build_lambda_zip.py"
LOCAL_LAMBDA_ARN = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-bundle"
ELF_MACHINES = {"x86_64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64

# Run by the target interpreter as `python -I -S -B -c DRIVER root secret token`:
# the four steps through the zip's handler, then where every module came from.
DRIVER = """
import json, sys
root = sys.argv[1]
sys.path.insert(0, root)
from rotating_pool.rotation import lambda_handler
for step in STEPS:
    lambda_handler({"SecretId": sys.argv[2], "ClientRequestToken": sys.argv[3], "Step": step}, None)
import psycopg
files = {n: getattr(m, "__file__", None) for n, m in list(sys.modules.items())}
print(json.dumps({
    "version": list(sys.version_info[:2]),
    "psycopg_impl": psycopg.pq.__impl__,
    "from_zip": sorted(n for n, f in files.items() if f and f.startswith(root)),
    "elsewhere": sorted(
        f for f in files.values()
        if f and not f.startswith(root) and (not f.startswith(sys.base_prefix) or "-packages" in f)
    ),
}))
"""


def build(tmp: Path, arch: str, *extra: str) -> tuple[Path, str]:
    """Run the build script; returns the zip's path and what the script printed."""
    out = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), "--python", LAMBDA_PYTHON, "--arch", arch,
         "--output", str(tmp), *extra],
        capture_output=True, text=True, check=False, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    zip_path = tmp / f"rotation-py{LAMBDA_PYTHON}-{arch}.zip"
    return zip_path, out.stdout


def target_interpreter() -> Path:
    """pyenv's Python of the Lambda runtime; the test fails (not skips) without it."""
    interpreter = find_interpreter(LAMBDA_PYTHON)
    if interpreter is None:
        pytest.fail(
            f"Python {LAMBDA_PYTHON} (the Lambda runtime's) is not installed: the bundle test "
            f"runs the zip with it. Install it with `pyenv install {LAMBDA_PYTHON}`."
        )
    return interpreter


@pytest.fixture(scope="module")
def x86_zip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return build(tmp_path_factory.mktemp("lambda-x86_64"), "x86_64")


@pytest.fixture(scope="module")
def unpacked(x86_zip: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lambda-task")
    with zipfile.ZipFile(x86_zip[0]) as archive:
        archive.extractall(root)
    return root


def wheel_tags(zip_path: Path) -> dict[str, list[str]]:
    """Distribution name -> the tags of its WHEEL file, for every wheel in the zip."""
    tags = {}
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if name.endswith(".dist-info/WHEEL"):
                lines = archive.read(name).decode().splitlines()
                tags[name.split("-")[0]] = [ln[5:] for ln in lines if ln.startswith("Tag: ")]
    return tags


def elf_machines(zip_path: Path) -> set[int]:
    """The e_machine field of every shared library in the zip."""
    machines = set()
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            if ".so" in name.rsplit("/", 1)[-1]:
                header = archive.read(name)[:20]
                assert header[:4] == b"\x7fELF", name
                machines.add(int.from_bytes(header[18:20], "little"))
    return machines


def zip_modules(zip_path: Path, package: str = "rotating_pool") -> set[str]:
    """The dotted names of `package`'s modules (.py files) in the zip."""
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.startswith(f"{package}/")]
    found = set()
    for name in names:
        if name.endswith(".py"):
            parts = name[: -len(".py")].split("/")
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def test_the_zip_holds_the_rotation_side_and_its_dependencies_only(x86_zip: tuple[Path, str]):
    with zipfile.ZipFile(x86_zip[0]) as archive:
        names = archive.namelist()
    top = {name.split("/")[0] for name in names}
    assert {"rotating_pool", "psycopg", "psycopg_binary", "boto3", "botocore"} <= top
    # Neither the client side's dependencies nor the test bed's.
    assert not top & {
        "sqlalchemy", "aws_secretsmanager_caching", "greenlet", "moto", "werkzeug", "flask",
        "cryptography", "bin",
    }
    assert "size" in x86_zip[1]
    assert "cold import" in x86_zip[1]


def test_the_zip_holds_the_modules_the_handler_imports_and_no_other(x86_zip: tuple[Path, str]):
    shipped = zip_modules(x86_zip[0])
    wanted = closure(ROOT, "rotating_pool", [HANDLER_MODULE])
    assert shipped == wanted
    # What that leaves out, named: the test bed, the client side, the command line.
    every = set(modules(ROOT, "rotating_pool"))
    stand_ins = {m for m in every if m == STAND_INS or m.startswith(f"{STAND_INS}.")}
    assert stand_ins, f"{STAND_INS} has no modules: is the constant stale?"
    assert not shipped & stand_ins
    assert not shipped & {"rotating_pool.engine", "rotating_pool.store", "rotating_pool.agent",
                          "rotating_pool.rotation.cli"}
    with zipfile.ZipFile(x86_zip[0]) as archive:
        stray = [
            n for n in archive.namelist()
            if n.startswith("rotating_pool/") and not n.endswith((".py", ".pyc"))
        ]
        record = next(
            archive.read(n).decode() for n in archive.namelist()
            if n.startswith("rotating_pool-") and n.endswith(".dist-info/RECORD")
        )
    assert stray == []  # py.typed and the like: no use to the function
    # The wheel's RECORD lists what is there, not what was pruned.
    recorded = {line.split(",")[0] for line in record.splitlines()}
    assert "rotating_pool/rotation/handler.py" in recorded
    assert not {r for r in recorded if r.startswith(STAND_INS.replace(".", "/") + "/")}


def test_x86_64_wheels_are_manylinux_for_the_runtime(x86_zip: tuple[Path, str]):
    tags = wheel_tags(x86_zip[0])
    tag = "cp" + LAMBDA_PYTHON.replace(".", "")
    assert all(t.startswith(f"{tag}-{tag}-manylinux") for t in tags["psycopg_binary"])
    assert all(t.endswith("_x86_64") for t in tags["psycopg_binary"])
    assert elf_machines(x86_zip[0]) == {ELF_MACHINES["x86_64"]}


def test_arm64_zip_carries_aarch64_wheels(tmp_path: Path):
    zip_path, _ = build(tmp_path, "arm64", "--no-compile")
    tags = wheel_tags(zip_path)
    assert tags["psycopg_binary"]
    assert all(t.endswith("_aarch64") and "manylinux" in t for t in tags["psycopg_binary"])
    # Every other wheel is pure Python: nothing built for this machine slipped in.
    assert all("py3-none-any" in t for n, t in tags.items() if n != "psycopg_binary"), tags
    assert elf_machines(zip_path) == {ELF_MACHINES["arm64"]}


@pytest.mark.parametrize("strategy", ["single", "alternating"])
def test_the_unpacked_zip_rotates_the_secret_on_the_runtimes_python(
    unpacked: Path,
    make_secret: Callable[[str], str],
    sm_client: Any,
    secretsmanager: Any,  # the bed's LocalSecretsManager
    strategy: str,
):
    interpreter = target_interpreter()
    secret_id = make_secret(strategy)
    before = json.loads(sm_client.get_secret_value(SecretId=secret_id)["SecretString"])
    token = sm_client.rotate_secret(SecretId=secret_id, RotationLambdaARN=LOCAL_LAMBDA_ARN)[
        "VersionId"
    ]
    env = {"PATH": os.environ["PATH"], "LOG_LEVEL": "INFO", **secretsmanager.env()}

    run = subprocess.run(
        # -B: nothing is written beside the code, as on Lambda's read-only /var/task.
        [str(interpreter), "-I", "-S", "-B", "-c", f"STEPS = {STEPS!r}\n{DRIVER}",
         str(unpacked), secret_id, token],
        capture_output=True, text=True, env=env, check=False, timeout=120,
    )

    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.splitlines()[-1])
    assert report["version"] == [int(n) for n in LAMBDA_PYTHON.split(".")]
    assert report["psycopg_impl"] == "binary"
    assert "rotating_pool.rotation.handler" in report["from_zip"]
    # Every module of the package the zip ships is one the rotation loaded.
    loaded = {m for m in report["from_zip"] if m.split(".")[0] == "rotating_pool"}
    assert loaded == set(modules(unpacked, "rotating_pool"))
    assert "botocore" in report["from_zip"]
    assert report["elsewhere"] == []
    stages = sm_client.describe_secret(SecretId=secret_id)["VersionIdsToStages"]
    assert stages[token] == ["AWSCURRENT"]
    after = json.loads(sm_client.get_secret_value(SecretId=secret_id)["SecretString"])
    assert after["password"] != before["password"]
    if strategy == "alternating":
        assert after["username"] != before["username"]
    with psycopg.connect(
        host=after["host"], port=after["port"], dbname=after["dbname"],
        user=after["username"], password=after["password"], connect_timeout=5,
    ) as conn:
        assert conn.execute("SELECT session_user").fetchone() == (after["username"],)
    assert before["password"] not in run.stdout + run.stderr
    assert after["password"] not in run.stdout + run.stderr
