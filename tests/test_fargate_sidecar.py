"""examples/fargate_sidecar: the task definition, IAM, Dockerfile, app and local runner.

The task definition is checked offline against ECS's RegisterTaskDefinition
input shape from botocore's service model, then for the wiring that shape
cannot see (start order, health checks, the shared agent token, logs). No
Docker engine here: the Dockerfile is interpreted (its COPY and pip steps) into
a fresh virtualenv and its CMD is started against the local stack.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.model import StructureShape
from botocore.validate import ParamValidator

from examples.fargate_sidecar import init_token
from rotating_pool.testing import LocalAgent, free_port, log_tail

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "fargate_sidecar"

# Every ${NAME} the JSON files hold, with a value of the right shape.
PLACEHOLDERS = {
    "AWS_ACCOUNT_ID": "123456789012",
    "AWS_REGION": "eu-west-1",
    "IMAGE_TAG": "1.0.0",
    "AGENT_IMAGE_TAG": "1.0.0",
    "SECRET_KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")

# Fargate's task sizes: CPU units -> allowed memory in MiB.
FARGATE_SIZES = {
    "256": {512, 1024, 2048},
    "512": set(range(1024, 4097, 1024)),
    "1024": set(range(2048, 8193, 1024)),
    "2048": set(range(4096, 16385, 1024)),
    "4096": set(range(8192, 30721, 1024)),
}


def _substitute(text: str) -> str:
    unknown = set(_PLACEHOLDER.findall(text)) - PLACEHOLDERS.keys()
    assert not unknown, f"undocumented placeholders: {sorted(unknown)}"
    return _PLACEHOLDER.sub(lambda m: PLACEHOLDERS[m[1]], text)


def _load(name: str) -> dict[str, Any]:
    return dict(json.loads(_substitute((EXAMPLE / name).read_text())))


@pytest.fixture(scope="module")
def task() -> dict[str, Any]:
    """task-definition.json with example values in place of its placeholders."""
    return _load("task-definition.json")


@pytest.fixture(scope="module")
def containers(task: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The container definitions by name."""
    return {c["name"]: c for c in task["containerDefinitions"]}


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


# -- the task definition against ECS's API model ------------------------------------


def _enum_violations(value: Any, shape: Any, where: str) -> list[str]:
    """Values outside their enum (botocore's ParamValidator does not check enums)."""
    problems = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                problems += _enum_violations(value[name], member, f"{where}.{name}")
    elif shape.type_name == "list" and isinstance(value, list):
        for index, item in enumerate(value):
            problems += _enum_violations(item, shape.member, f"{where}[{index}]")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            problems += _enum_violations(item, shape.value, f"{where}[{key!r}]")
    elif shape.type_name == "string" and shape.enum and value not in shape.enum:
        problems.append(f"{where}: {value!r} is not one of {shape.enum}")
    return problems


def _register_task_definition_input() -> StructureShape:
    """ECS's RegisterTaskDefinition request shape, from botocore's service model."""
    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    assert shape is not None
    return shape


def test_task_definition_is_a_valid_register_task_definition_request(task: dict[str, Any]) -> None:
    shape = _register_task_definition_input()
    report = ParamValidator().validate(task, shape)
    assert not report.has_errors(), report.generate_report()
    assert _enum_violations(task, shape, "task") == []


def test_the_validation_would_catch_a_mistake(task: dict[str, Any]) -> None:
    shape = _register_task_definition_input()
    broken = json.loads(json.dumps(task))
    broken["containerDefinitions"][2]["healthCheck"]["interval"] = "15"
    broken["containerDefinitions"][2]["dependsOn"][0]["condition"] = "READY"
    assert ParamValidator().validate(broken, shape).has_errors()
    assert _enum_violations(broken, shape, "task")


def test_task_definition_is_for_fargate(task: dict[str, Any]) -> None:
    assert task["networkMode"] == "awsvpc"
    assert task["requiresCompatibilities"] == ["FARGATE"]
    assert int(task["memory"]) in FARGATE_SIZES[task["cpu"]]
    assert task["runtimePlatform"]["operatingSystemFamily"] == "LINUX"
    for role in ("executionRoleArn", "taskRoleArn"):
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", task[role]), role
    assert task["executionRoleArn"] != task["taskRoleArn"]
    for volume in task["volumes"]:
        # Fargate has no host paths: a volume without one is task storage.
        assert "sourcePath" not in volume.get("host", {})
    reserved = 0
    for container in task["containerDefinitions"]:
        assert "links" not in container  # not supported with awsvpc
        for mapping in container.get("portMappings", []):
            assert mapping.get("hostPort", mapping["containerPort"]) == mapping["containerPort"]
        reserved += container.get("memoryReservation", 0)
    assert reserved < int(task["memory"])


# -- the wiring -------------------------------------------------------------------


def test_containers_start_token_then_agent_then_app(containers: dict[str, Any]) -> None:
    init, agent, app = (
        containers["agent-token"],
        containers["secrets-manager-agent"],
        containers["app"],
    )
    assert init["essential"] is False  # it exits once the token is written
    assert agent["essential"] is True
    assert app["essential"] is True
    assert agent["dependsOn"] == [{"containerName": "agent-token", "condition": "SUCCESS"}]
    assert app["dependsOn"] == [{"containerName": "secrets-manager-agent", "condition": "HEALTHY"}]
    # The same rules in general, as ECS applies them.
    for container in containers.values():
        for dependency in container.get("dependsOn", []):
            target = containers[dependency["containerName"]]
            if dependency["condition"] in ("SUCCESS", "COMPLETE"):
                assert target["essential"] is False
            if dependency["condition"] == "HEALTHY":
                assert "healthCheck" in target


def test_the_agent_and_the_app_have_health_checks(containers: dict[str, Any]) -> None:
    for name in ("secrets-manager-agent", "app"):
        check = containers[name]["healthCheck"]
        assert check["command"][0] in ("CMD", "CMD-SHELL")
        assert 5 <= check["interval"] <= 300
        assert 2 <= check["timeout"] <= 60
        assert check["timeout"] < check["interval"]
        assert 1 <= check["retries"] <= 10
        assert 0 <= check["startPeriod"] <= 300
    agent_probe = " ".join(containers["secrets-manager-agent"]["healthCheck"]["command"])
    # /ping is the agent's health endpoint and the one that needs no token.
    assert "http://127.0.0.1:2773/ping" in agent_probe
    app = containers["app"]
    port = app["portMappings"][0]["containerPort"]
    assert f"http://127.0.0.1:{port}/health" in " ".join(app["healthCheck"]["command"])


def test_the_agent_token_is_a_file_on_a_task_volume_both_containers_read(
    task: dict[str, Any], containers: dict[str, Any]
) -> None:
    init, agent, app = (
        containers["agent-token"],
        containers["secrets-manager-agent"],
        containers["app"],
    )
    token_url = _env(agent)["AWS_TOKEN"]
    assert token_url.startswith("file://")
    assert _env(app)["AWS_TOKEN"] == token_url
    token_path = token_url[len("file://") :]
    volume_names = {v["name"] for v in task["volumes"]}

    def mount_of(container: dict[str, Any]) -> dict[str, Any]:
        (mount,) = [
            m
            for m in container["mountPoints"]
            if token_path.startswith(m["containerPath"].rstrip("/") + "/")
        ]
        assert mount["sourceVolume"] in volume_names
        return dict(mount)

    assert mount_of(init).get("readOnly", False) is False  # it writes the token
    assert mount_of(agent)["readOnly"] is True
    assert mount_of(app)["readOnly"] is True
    assert mount_of(init)["sourceVolume"] == mount_of(agent)["sourceVolume"]
    assert mount_of(app)["sourceVolume"] == mount_of(agent)["sourceVolume"]
    # The init container runs init_token.py on that very path, as root, giving
    # the file to the group both other containers run with.
    command = init["command"]
    assert command[:2] == ["python", "/app/init_token.py"]
    assert command[2] == token_path
    group = command[command.index("--group") + 1]
    assert init["user"] == "0"
    assert agent["user"].split(":")[1] == group
    assert app["user"].split(":")[1] == group
    # No token value anywhere in the task definition.
    for container in containers.values():
        for name in ("AWS_TOKEN", "AWS_SESSION_TOKEN"):
            value = _env(container).get(name)
            assert value is None or value.startswith("file://")


def _flat_toml(text: str) -> dict[str, Any]:
    """`key = value` lines of a flat TOML file (tomllib is Python 3.11+ only)."""
    values: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            key, _, value = (part.strip() for part in line.partition("="))
            values[key] = json.loads(value)  # strings, booleans and numbers read alike
    return values


def test_the_app_finds_the_agent_where_its_config_puts_it(containers: dict[str, Any]) -> None:
    config = _flat_toml((EXAMPLE / "agent" / "config.toml").read_text())
    endpoint = _env(containers["app"])["ROTATING_POOL_AGENT_ENDPOINT"]
    assert endpoint == f"http://127.0.0.1:{config['http_port']}"
    assert config["log_to_file"] is False  # logs to stdout, where awslogs reads them
    # The agent listens on the task's loopback only: nothing to publish.
    assert "portMappings" not in containers["secrets-manager-agent"]


def test_every_container_logs_to_cloudwatch(
    task: dict[str, Any], containers: dict[str, Any]
) -> None:
    for container in containers.values():
        logs = container["logConfiguration"]
        assert logs["logDriver"] == "awslogs"
        options = logs["options"]
        assert options["awslogs-group"].startswith("/ecs/")
        assert options["awslogs-region"] == PLACEHOLDERS["AWS_REGION"]
        assert options["awslogs-stream-prefix"]  # required on Fargate


def test_the_app_listens_where_its_port_mapping_says(containers: dict[str, Any]) -> None:
    app = containers["app"]
    (mapping,) = app["portMappings"]
    assert mapping["protocol"] == "tcp"
    assert _env(app)["PORT"] == str(mapping["containerPort"])
    assert int(_env(app)["WEB_CONCURRENCY"]) >= 2


def test_no_credential_is_in_the_task_definition(containers: dict[str, Any]) -> None:
    for container in containers.values():
        for name, value in _env(container).items():
            assert not re.search(r"PASSWORD|SECRET_ACCESS|ACCESS_KEY", name), name
            assert "password" not in value.lower()
        assert "secrets" not in container  # nothing injected at start: the agent reads it
    assert _env(containers["app"])["DB_SECRET_ID"] == "orders/db"


# -- IAM ------------------------------------------------------------------------------


def test_the_task_role_may_read_the_app_secret_and_nothing_else(containers: dict[str, Any]) -> None:
    policy = _load("iam-task-role-policy.json")
    assert policy["Version"] == "2012-10-17"
    secret_name = _env(containers["app"])["DB_SECRET_ID"]
    region, account = PLACEHOLDERS["AWS_REGION"], PLACEHOLDERS["AWS_ACCOUNT_ID"]
    # Secrets Manager appends a dash and six random characters to the name.
    arn = f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_name}-AbC123"
    other = f"arn:aws:secretsmanager:{region}:{account}:secret:{secret_name}-admin-AbC123"
    read, decrypt = policy["Statement"]
    assert read["Effect"] == "Allow"
    assert sorted(read["Action"]) == [
        "secretsmanager:DescribeSecret",
        "secretsmanager:GetSecretValue",
    ]
    assert fnmatch.fnmatchcase(arn, read["Resource"])
    assert not fnmatch.fnmatchcase(other, read["Resource"])
    assert decrypt["Action"] == "kms:Decrypt"
    assert decrypt["Resource"].startswith(f"arn:aws:kms:{region}:{account}:key/")
    assert decrypt["Condition"]["StringEquals"]["kms:ViaService"] == (
        f"secretsmanager.{region}.amazonaws.com"
    )
    trust = _load("iam-task-trust-policy.json")
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Action"] == "sts:AssumeRole"


def test_placeholders_are_all_explained_in_the_readme() -> None:
    readme = (EXAMPLE / "README.md").read_text()
    used = set()
    for name in ("task-definition.json", "iam-task-role-policy.json", "iam-task-trust-policy.json"):
        used |= set(_PLACEHOLDER.findall((EXAMPLE / name).read_text()))
    assert used == PLACEHOLDERS.keys()
    for name in used:
        assert name in readme, name


# -- the token init step ----------------------------------------------------------------


def test_init_token_writes_a_random_group_readable_token_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "token"
    assert init_token.main([str(path)]) == 0
    token = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    assert init_token.main([str(path)]) == 0  # a restart keeps what the agent read
    assert path.read_text() == token
    output = capsys.readouterr().out
    assert "wrote a new" in output
    assert "kept the existing" in output
    assert token not in output
    other = tmp_path / "other"
    init_token.write_token(other)
    assert other.read_text() != token


# -- the Dockerfile -----------------------------------------------------------------------


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile this test knows how to play."""

    base: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    copies: list[tuple[list[str], str, str]] = field(default_factory=list)  # srcs, dest, workdir
    runs: list[tuple[str, str]] = field(default_factory=list)  # command, workdir
    user: str = ""
    cmd: list[str] = field(default_factory=list)


def parse_dockerfile(path: Path) -> Dockerfile:
    """FROM, ENV, WORKDIR, COPY, RUN, USER and CMD (exec form); others are ignored."""
    text = re.sub(r"\\\n", " ", path.read_text())
    parsed = Dockerfile()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            parsed.base = rest.split()[0]
        elif keyword == "ENV":
            parsed.env.update(item.split("=", 1) for item in shlex.split(rest))  # type: ignore[misc]
        elif keyword == "WORKDIR":
            parsed.workdir = rest
        elif keyword == "COPY":
            *sources, dest = shlex.split(rest)
            parsed.copies.append((sources, dest, parsed.workdir))
        elif keyword == "RUN":
            parsed.runs.append((rest, parsed.workdir))
        elif keyword == "USER":
            parsed.user = rest
        elif keyword == "CMD":
            parsed.cmd = json.loads(rest)
    return parsed


def test_dockerfile_serves_the_app_with_gunicorn_preload_as_a_non_root_user() -> None:
    dockerfile = parse_dockerfile(EXAMPLE / "Dockerfile")
    assert re.fullmatch(r"python:3\.(1[0-9])-slim", dockerfile.base)
    assert dockerfile.user and dockerfile.user.split(":")[0] not in ("0", "root")
    assert dockerfile.cmd == ["gunicorn", "--config", "gunicorn.conf.py", "app:app"]
    assert any("pip install -r requirements.txt" in run for run, _ in dockerfile.runs)
    # The build context is the repository root; its ignore file must let
    # through everything the Dockerfile copies.
    allowed = {
        line[1:].rstrip("/")
        for line in (EXAMPLE / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for sources, _, _ in dockerfile.copies:
        for source in sources:
            assert source in allowed, f"{source} is not let through Dockerfile.dockerignore"
    settings = runpy.run_path(str(EXAMPLE / "gunicorn.conf.py"))
    assert settings["preload_app"] is True
    assert settings["workers"] >= 2
    assert settings["bind"] == "0.0.0.0:8000"


def _play_dockerfile(dockerfile: Dockerfile, root: Path, python: Path) -> None:
    """Do the COPY steps into `root` and the `pip install` steps with `python`'s pip.

    Other RUN steps (user creation, clean-up) need a real image and are skipped;
    the Dockerfile's ENV applies to the container, not to these installs (it
    turns pip's cache off, which only slows a test down).
    """

    def inside(path: str, workdir: str) -> Path:
        return root / (path if path.startswith("/") else f"{workdir}/{path}").lstrip("/")

    for sources, dest, workdir in dockerfile.copies:
        target = inside(dest, workdir)
        into_directory = dest.endswith("/") or len(sources) > 1
        for source in sources:
            origin = REPO / source
            if origin.is_dir():  # as Docker does: the directory's contents
                shutil.copytree(
                    origin, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
            elif into_directory:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)
    for command, workdir in dockerfile.runs:
        for step in command.split("&&"):
            words = shlex.split(step)
            if words[:2] != ["pip", "install"]:
                continue
            arguments = [str(inside(w, workdir)) if w.startswith("/") else w for w in words[2:]]
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", *arguments],
                cwd=inside(workdir, "/"),
                check=True,
                timeout=900,
            )


def _get(port: int, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if body is None:
            connection.request("GET", path)
        else:
            connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


@pytest.fixture
def agent(sm_client: Any) -> Iterator[LocalAgent]:
    """The agent stand-in in front of the local Secrets Manager."""
    with LocalAgent(sm_client, port=0) as stand_in:
        yield stand_in


@pytest.mark.slow
def test_dockerfile_packages_install_and_its_command_serves_in_a_fresh_venv(
    tmp_path: Path,
    make_secret: Any,
    agent: LocalAgent,
    containers: dict[str, Any],
) -> None:
    dockerfile = parse_dockerfile(EXAMPLE / "Dockerfile")
    root = tmp_path / "image"
    environment = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(environment)
    python = environment / "bin" / "python"
    _play_dockerfile(dockerfile, root, python)
    workdir = root / dockerfile.workdir.lstrip("/")
    assert (workdir / "app.py").exists()

    secret_arn = make_secret("alternating")
    token_file = tmp_path / "awssmatoken" / "token"
    token_file.parent.mkdir()
    init_token.write_token(token_file)
    agent.token = token_file.read_text()
    port = free_port()
    # The container's environment: the image's ENV and the task definition's,
    # pointed at this machine, with no AWS setting other than the agent's token.
    env = {
        "PATH": f"{environment / 'bin'}:/usr/bin:/bin",
        **dockerfile.env,
        **_env(containers["app"]),
        "DB_SECRET_ID": secret_arn,
        "AWS_TOKEN": f"file://{token_file}",
        "ROTATING_POOL_AGENT_ENDPOINT": agent.endpoint_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    }
    log_path = tmp_path / "app.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            dockerfile.cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log_tail(log_path)
            try:
                status, _ = _get(port, "/health")
                break
            except OSError:
                assert time.monotonic() < deadline, log_tail(log_path)
                time.sleep(0.2)
        assert status == 200
        assert _get(port, "/ready") == (200, {"status": "ready"})
        status, order = _get(port, "/orders", {"item": "tea", "quantity": 2})
        assert status == 201
        assert order["item"] == "tea"
        assert _get(port, f"/orders/{order['id']}") == (200, order)
        assert _get(port, "/orders", {"item": "tea", "quantity": True})[0] == 400
        assert _get(port, "/orders/999999999")[0] == 404
        # The task definition's health check command, as ECS would run it in the container.
        check = containers["app"]["healthCheck"]["command"]
        assert check[0] == "CMD"
        probe = [part.replace(":8000/", f":{port}/") for part in check[1:]]
        subprocess.run(probe, env=env, check=True, timeout=10)
        # The secret was read through the agent only (the app has no AWS settings).
        assert agent.requests >= 1
        # The app ran from the venv, not from this checkout.
        site = subprocess.run(
            [str(python), "-c", "import rotating_pool, flask; print(rotating_pool.__file__)"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert str(environment) in site
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=40)
    output = log_path.read_text()
    assert code == 0, log_tail(log_path)
    assert "Booting worker" in output
    assert "Traceback" not in output


# -- the local runner ---------------------------------------------------------------


@pytest.mark.slow
def test_local_runner_quick_mode_loses_no_request_and_no_write(tmp_path: Path) -> None:
    chart = tmp_path / "run.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.fargate_sidecar.run_local",
            "--quick",
            "--chart",
            str(chart),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "LOCAL STAND-IN for the AWS Secrets Manager Agent" in output
    # The production path: a TLS-only server, every login verify-full, no warning.
    assert "serves TLS only" in output
    assert "TLS is off" not in output
    assert not [line for line in output.splitlines() if line.startswith("WARNING")]
    assert re.search(r"failed requests\s+0\n", output), output[-3000:]
    rows = re.search(r"rows in the table\s+([\d,]+)\s+vs 2xx write answers ([\d,]+): equal", output)
    assert rows, output[-3000:]
    assert rows[1] == rows[2]
    assert int(rows[1].replace(",", "")) > 0
    rotations = re.search(r"rotations\s+(\d+) alternating, (\d+) single-user\n", output)
    assert rotations, output[-3000:]
    assert int(rotations[1]) >= 1
    assert int(rotations[2]) >= 1
    assert re.search(r"secrets in app log\s+0 ", output)
    # The sessions panel's data: pg_stat_activity sampled, both users seen.
    sessions = re.search(
        r"database sessions\s+(\d+)\s+samples of pg_stat_activity \(users: (.*)\)", output
    )
    assert sessions, output[-3000:]
    assert int(sessions[1]) > 10 and sessions[2].startswith("orders_")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert chart.stat().st_size > 10_000


def test_the_sessions_panel_draws_one_line_per_user() -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from examples.fargate_sidecar.chart import plot_sessions  # noqa: PLC0415
    from examples.fargate_sidecar.sessions import SessionSample  # noqa: PLC0415

    samples = [
        SessionSample(0.5, {"app_a": 4}),
        SessionSample(1.0, {"app_a": 2, "app_b": 2}),
        SessionSample(1.5, {"app_b": 4}),
    ]
    figure, axis = plt.subplots()
    plot_sessions(axis, samples)
    lines = {line.get_label(): list(line.get_ydata()) for line in axis.get_lines()}
    plt.close(figure)
    assert lines == {"sessions of app_a": [4, 2, 0], "sessions of app_b": [0, 2, 4]}


def test_the_app_asks_for_verify_full_and_gets_no_setting_of_the_rotation_side(
    tls_postgres: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sqlalchemy  # noqa: PLC0415

    from examples.fargate_sidecar.app_process import app_environment  # noqa: PLC0415
    from examples.fargate_sidecar.scene import database_url, rotation_environment  # noqa: PLC0415

    url = sqlalchemy.make_url(database_url(tls_postgres))
    assert url.drivername == "postgresql+psycopg"
    assert url.host is None and url.username is None  # the secret names them
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": str(tls_postgres.ca_path)}
    assert rotation_environment(tls_postgres) == {"SSL_ROOT_CERT": str(tls_postgres.ca_path)}

    for name, value in {**rotation_environment(tls_postgres), "AWS_ACCESS_KEY_ID": "x"}.items():
        monkeypatch.setenv(name, value)
    agent = type("Agent", (), {"endpoint_url": "http://127.0.0.1:1"})()
    args = type("Args", (), {"workers": 2, "retire_after": None})()
    wanted = database_url(tls_postgres)
    env = app_environment(agent, tmp_path / "token", args, database_url=wanted)  # type: ignore[arg-type]
    assert env["DATABASE_URL"] == wanted
    assert "SSL_ROOT_CERT" not in env
    assert not {name for name in env if name.startswith("AWS_")} - {"AWS_TOKEN"}
