"""Build the rotation function's Lambda zip for a Python version and an architecture.

    python deploy/build_lambda_zip.py --python 3.12 --arch x86_64   # or: make lambda-zip

The zip holds what the handler (`rotating_pool.rotation`) imports and nothing
else. Of `rotating_pool` (from its wheel, built from this checkout unless
`--wheel` names one) only the modules the handler's import graph reaches are
kept: the graph is read from the installed sources by `deploy/import_graph.py`
(ast, nothing imported), so a module the rotation side starts to import is
shipped without a list to keep up to date, and the client side (engines, store,
agent source), the command line (`rotation/cli.py`, no use on Lambda) and the
test bed (`rotating_pool.testing`: moto's patches, the stand-ins) are left out.
Of the dependencies, what the rotation side imports: psycopg with its binary
wheel (libpq included, so no layer is needed) and boto3. The client side's
(SQLAlchemy) are left out. Dependencies come as manylinux wheels from the
package index, for the glibc of the function's runtime, whatever machine builds
the zip.

To keep the zip small, botocore's service models are cut down to the services the
rotation calls (`BOTOCORE_SERVICES`; `--all-botocore-services` keeps them all).
Each module is compiled for the target Python when that interpreter is found
(pyenv's, or `--interpreter`): Lambda's /var/task is read-only, so without .pyc
files every cold start would compile the sources again. The .pyc files are
`unchecked-hash` ones, valid whatever timestamps the unzipped files get.

It prints the zip's path and size and, when the interpreter is there, the
handler's cold import time (a fresh `python -I -S -B` on the unpacked zip, median
of `--import-runs`).
"""

from __future__ import annotations

import argparse
import email.parser
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script (`python deploy/build_lambda_zip.py`), the checkout is not on the path.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from deploy.import_graph import closure  # noqa: E402

PACKAGE = "rotating_pool"
HANDLER_MODULE = "rotating_pool.rotation"

# What rotating_pool.rotation imports beyond the standard library. Their version
# ranges are read from the wheel's metadata, so the zip follows pyproject.toml.
ROTATION_REQUIREMENTS = ("psycopg", "boto3")
BOTOCORE_SERVICES = ("secretsmanager", "rds")

# glibc of each Lambda Python runtime: python3.10 and python3.11 run on Amazon
# Linux 2 (glibc 2.26), python3.12 and later on Amazon Linux 2023 (glibc 2.34).
# https://docs.aws.amazon.com/lambda/latest/dg/lambda-runtimes.html
RUNTIME_GLIBC = {"3.10": 26, "3.11": 26, "3.12": 34, "3.13": 34, "3.14": 34}
# The runtime deploy/rotation.yaml names (tests/test_deploy_templates.py holds them equal).
DEFAULT_PYTHON = "3.12"
ARCHITECTURES = {"x86_64": "x86_64", "arm64": "aarch64"}

# A fixed date for every zip entry, so that one input gives one zip.
ZIP_DATE = (2020, 1, 1, 0, 0, 0)


class BuildError(Exception):
    """The zip cannot be built; the message says what to fix."""


def platform_tags(python: str, arch: str) -> list[str]:
    """The manylinux tags a wheel may carry to run on Lambda's `python` runtime."""
    machine = ARCHITECTURES[arch]
    glibc = RUNTIME_GLIBC[python]
    tags = [f"manylinux2014_{machine}"]
    tags += [f"manylinux_2_{minor}_{machine}" for minor in range(17, glibc + 1)]
    return tags


def find_interpreter(python: str) -> Path | None:
    """pyenv's CPython `python` (e.g. 3.12), the newest patch release, if installed."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pattern = re.compile(rf"^{re.escape(python)}\.\d+$")
    found = sorted(
        (p for p in root.glob(f"{python}.*") if pattern.match(p.name)),
        key=lambda p: int(p.name.rsplit(".", 1)[1]),
    )
    for candidate in reversed(found):
        executable = candidate / "bin" / "python"
        if executable.is_file():
            return executable
    return None


def build_wheel(directory: Path) -> Path:
    """Build rotating_pool's wheel from this checkout into `directory`."""
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
          "--wheel-dir", str(directory), str(ROOT)])
    wheels = sorted(directory.glob("rotating_pool-*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel made no rotating_pool wheel in {directory}")
    return wheels[-1]


def rotation_requirements(wheel: Path) -> list[str]:
    """The requirement strings of `ROTATION_REQUIREMENTS`, as the wheel declares them."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    declared: dict[str, str] = {}
    for requirement in metadata.get_all("Requires-Dist") or []:
        if ";" in requirement:  # an extra's requirement
            continue
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", requirement)
        if match:
            declared[match.group(1).lower()] = match.group(2).strip()
    missing = [n for n in ROTATION_REQUIREMENTS if n not in declared]
    if missing:
        raise BuildError(f"{wheel.name} does not declare {', '.join(missing)}")
    # psycopg's binary wheel: libpq and OpenSSL inside, nothing needed on the runtime.
    extras = {"psycopg": "[binary]"}
    return [f"{n}{extras.get(n, '')}{declared[n]}" for n in ROTATION_REQUIREMENTS]


def install(wheel: Path, target: Path, python: str, arch: str) -> None:
    """Install the wheel (without its client-side dependencies) and the rotation's."""
    platform_args = [f"--platform={tag}" for tag in platform_tags(python, arch)]
    common = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-compile",
        "--ignore-installed", "--target", str(target), "--only-binary=:all:",
        "--implementation", "cp", "--python-version", python, *platform_args,
    ]
    _run([*common, "--no-deps", str(wheel)])
    _run([*common, *rotation_requirements(wheel)])
    # Console scripts: no use on Lambda.
    shutil.rmtree(target / "bin", ignore_errors=True)


def prune_package(target: Path) -> set[str]:
    """Delete the package's modules the handler does not import (and files that are not
    modules, such as py.typed); returns the modules kept. The wheel's RECORD is
    rewritten to list what remains."""
    keep = closure(target, PACKAGE, [HANDLER_MODULE])
    root = target / PACKAGE
    kept_files = set()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        parts = list(path.relative_to(target).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if path.suffix == ".py" and ".".join(parts) in keep:
            kept_files.add(path.relative_to(target).as_posix())
        else:
            path.unlink()
    for directory in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    for record in target.glob(f"{PACKAGE}-*.dist-info/RECORD"):
        lines = record.read_text().splitlines()
        record.write_text("".join(
            f"{line}\n" for line in lines
            if not line.startswith(f"{PACKAGE}/") or line.split(",")[0] in kept_files
        ))
    return keep


def prune_botocore(target: Path, services: tuple[str, ...]) -> None:
    """Keep botocore's models of `services` only (and its top-level data files)."""
    data = target / "botocore" / "data"
    if not data.is_dir():
        raise BuildError(f"no botocore/data in {target}: did boto3 install?")
    for entry in data.iterdir():
        if entry.is_dir() and entry.name not in services:
            shutil.rmtree(entry)
    absent = [s for s in services if not (data / s).is_dir()]
    if absent:
        raise BuildError(f"botocore has no model for {', '.join(absent)}")


def compile_for(interpreter: Path, target: Path) -> None:
    """Compile every module with the target interpreter (unchecked-hash .pyc files)."""
    _run([str(interpreter), "-I", "-m", "compileall", "-q", "-j", "0",
          "--invalidation-mode", "unchecked-hash", str(target)])


def write_zip(source: Path, destination: Path) -> None:
    """Zip `source`'s files, sorted, with fixed dates (0644, or 0755 for executables)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, path.read_bytes())
    partial.replace(destination)


def cold_import_seconds(interpreter: Path, unpacked: Path, runs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds to import the handler in fresh interpreters with only `unpacked`
    on the path. CPU time is the steadier figure on a machine shared with other work."""
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); "
        "w, c = time.perf_counter(), time.process_time(); "
        f"from {HANDLER_MODULE} import lambda_handler; "
        "print(time.perf_counter() - w, time.process_time() - c)"
    )
    times = []
    for _ in range(runs):
        out = _run([str(interpreter), "-I", "-S", "-B", "-c", code, str(unpacked)], capture=True)
        wall, cpu = out.split()
        times.append((float(wall), float(cpu)))
    return times


def build(
    *,
    python: str,
    arch: str,
    output: Path,
    wheel: Path | None = None,
    interpreter: Path | None = None,
    all_botocore_services: bool = False,
    include: tuple[Path, ...] = (),
) -> Path:
    """Build the zip; returns its path. See the module's docstring."""
    if python not in RUNTIME_GLIBC:
        raise BuildError(f"--python {python}: Lambda runtimes known here are {list(RUNTIME_GLIBC)}")
    if arch not in ARCHITECTURES:
        raise BuildError(f"--arch {arch}: choose one of {list(ARCHITECTURES)}")
    with tempfile.TemporaryDirectory(prefix="rotating-pool-lambda-") as scratch:
        work = Path(scratch)
        wheel = wheel or build_wheel(work / "wheel")
        target = work / "root"
        install(wheel, target, python, arch)
        prune_package(target)
        if not all_botocore_services:
            prune_botocore(target, BOTOCORE_SERVICES)
        for extra in include:
            if not extra.is_file():
                raise BuildError(f"--include {extra}: no such file")
            shutil.copy(extra, target / extra.name)
        if interpreter is not None:
            compile_for(interpreter, target)
        zip_path = output / f"rotation-py{python}-{arch}.zip"
        write_zip(target, zip_path)
    return zip_path


def main(argv: list[str] | None = None) -> int:
    """Command line: build, then print the size and (if possible) the cold import time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=DEFAULT_PYTHON,
                        help=f"the Lambda runtime's Python ({DEFAULT_PYTHON})")
    parser.add_argument("--arch", default="x86_64", choices=sorted(ARCHITECTURES))
    parser.add_argument("--output", type=Path, default=ROOT / "dist" / "lambda")
    parser.add_argument("--wheel", type=Path, help="rotating_pool's wheel (default: build it)")
    parser.add_argument("--interpreter", type=Path,
                        help="the target Python, to compile and time imports (default: pyenv's)")
    parser.add_argument("--no-compile", action="store_true", help="ship no .pyc files")
    parser.add_argument("--all-botocore-services", action="store_true",
                        help="keep every botocore service model (about 15 MB more)")
    parser.add_argument("--include", type=Path, action="append", default=[],
                        help="a file to put at the zip's root (e.g. a CA bundle); repeatable")
    parser.add_argument("--import-runs", type=int, default=5)
    args = parser.parse_args(argv)

    interpreter = args.interpreter or find_interpreter(args.python)
    if args.interpreter is not None and not args.interpreter.is_file():
        parser.error(f"--interpreter {args.interpreter} does not exist")
    try:
        zip_path = build(
            python=args.python,
            arch=args.arch,
            output=args.output,
            wheel=args.wheel,
            interpreter=None if args.no_compile else interpreter,
            all_botocore_services=args.all_botocore_services,
            include=tuple(args.include),
        )
        report(
            zip_path, args.python, args.arch, interpreter, args.import_runs,
            no_pyc=args.no_compile or interpreter is None,
        )
    except BuildError as error:
        print(f"build_lambda_zip: {error}", file=sys.stderr)
        return 2
    return 0


def report(
    zip_path: Path, python: str, arch: str, interpreter: Path | None, runs: int, *, no_pyc: bool
) -> None:
    """Print the zip's size and, where it can run here, the handler's cold import time."""
    with zipfile.ZipFile(zip_path) as archive:
        unpacked = sum(i.file_size for i in archive.infolist())
        count = len(archive.infolist())
    print(f"zip           {zip_path}")
    print(f"size          {zip_path.stat().st_size / 1e6:.1f} MB zipped, "
          f"{unpacked / 1e6:.1f} MB unpacked, {count} files")
    print(f"handler       {HANDLER_MODULE}.lambda_handler")
    if interpreter is None:
        print(f"cold import   not measured: no Python {python} here (pyenv install it, "
              "or pass --interpreter)")
        return
    if arch != "x86_64" or os.uname().machine != "x86_64":
        print(f"cold import   not measured: a {arch} zip on a {os.uname().machine} machine")
        return
    with tempfile.TemporaryDirectory(prefix="rotating-pool-lambda-run-") as scratch:
        with zipfile.ZipFile(zip_path) as archive:
            archive.extractall(scratch)
        times = cold_import_seconds(interpreter, Path(scratch), runs)
    wall = statistics.median(t[0] for t in times) * 1000
    cpu = statistics.median(t[1] for t in times) * 1000
    print(f"cold import   {wall:.0f} ms wall, {cpu:.0f} ms CPU (medians of {len(times)} fresh "
          f"interpreters) with {interpreter}{', no .pyc' if no_pyc else ''}")


def _run(command: list[str], *, capture: bool = False) -> str:
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(
            f"{' '.join(command[:6])} ... failed ({result.returncode}) after "
            f"{time.monotonic() - started:.0f} s:\n{result.stderr[-3000:]}"
        )
    return result.stdout if capture else ""


if __name__ == "__main__":
    sys.exit(main())
