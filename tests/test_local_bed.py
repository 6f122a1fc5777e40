"""The local test bed: PostgreSQL, moto patched to behave like AWS, and the fault proxy."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError

from rotating_pool.testing import AppSchema, FaultProxy, LocalPostgres, LocalSecretsManager

LOCAL_LAMBDA = "arn:aws:lambda:us-east-1:123456789012:function:rotating-pool-local-rotation"
OTHER_LAMBDA = "arn:aws:lambda:us-east-1:123456789012:function:someone-elses-rotation"

# Quick failures: no retries, short timeouts.
QUICK = Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1})


def token() -> str:
    return str(uuid.uuid4())


def error_code(info: pytest.ExceptionInfo[ClientError]) -> str:
    return str(info.value.response["Error"]["Code"])


def stages(client: Any, secret_id: str) -> dict[str, list[str]]:
    return dict(client.describe_secret(SecretId=secret_id)["VersionIdsToStages"])


def new_secret(client: Any, value: str = "v1") -> tuple[str, str]:
    """Create a secret; return its ARN and first version id."""
    answer = client.create_secret(Name=f"bed-{uuid.uuid4().hex}", SecretString=value)
    return answer["ARN"], answer["VersionId"]


def connect(schema: AppSchema, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host=schema.host,
        port=schema.port,
        user=user,
        password=schema.passwords[user],
        dbname=schema.dbname,
        connect_timeout=5,
    )


# -- PostgreSQL ----------------------------------------------------------------


def test_first_user_logs_in_and_acts_as_the_group_role(app_schema: AppSchema) -> None:
    with connect(app_schema, app_schema.users[0]) as conn:
        assert conn.execute("select session_user, current_user").fetchone() == (
            app_schema.users[0],
            app_schema.role,
        )


def test_second_user_is_nologin(app_schema: AppSchema) -> None:
    with pytest.raises(psycopg.OperationalError, match="is not permitted to log in"):
        connect(app_schema, app_schema.users[1])


def test_wrong_password_is_rejected(app_schema: AppSchema) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(
            host=app_schema.host,
            port=app_schema.port,
            user=app_schema.users[0],
            password="wrong",
            dbname=app_schema.dbname,
        )


def test_identifiers_with_capitals_spaces_and_quotes_work(postgres: LocalPostgres) -> None:
    schema = postgres.create_app_schema(
        role='My "Odd" Role', users=("User A", 'user"b'), dbname="Odd DB"
    )
    with connect(schema, "User A") as conn:
        assert conn.execute("select current_user, current_database()").fetchone() == (
            'My "Odd" Role',
            "Odd DB",
        )


def test_server_runs_with_the_requested_settings(postgres: LocalPostgres) -> None:
    with postgres.admin_connect() as conn:
        assert conn.execute("show max_connections").fetchone() == ("400",)
        assert conn.execute("show fsync").fetchone() == ("off",)


def test_passwords_stay_out_of_repr_and_server_log(
    postgres: LocalPostgres, app_schema: AppSchema
) -> None:
    log = postgres.log_path.read_text()
    for password in [postgres.admin_password, *app_schema.passwords.values()]:
        assert password not in repr(app_schema)
        assert password not in log


def test_secret_documents_have_the_rds_shape(
    postgres: LocalPostgres, app_schema: AppSchema
) -> None:
    first, second = app_schema.users
    base = {
        "engine": "postgres",
        "host": "127.0.0.1",
        "port": postgres.port,
        "dbname": app_schema.dbname,
        "username": first,
        "password": app_schema.passwords[first],
        "ssl": False,  # a plain server: the rotation side must not expect TLS
    }
    assert app_schema.secret_document("single") == {**base, "rotation_strategy": "single"}
    assert app_schema.secret_document("alternating", masterarn="arn:admin") == {
        **base,
        "rotation_strategy": "alternating",
        "rotation_role": app_schema.role,
        "rotation_users": [first, second],
        "masterarn": "arn:admin",
    }
    admin = postgres.admin_document()
    assert (admin["username"], admin["dbname"], admin["ssl"]) == ("postgres", "postgres", False)


def test_tls_bed_serves_verified_tls_only(tls_postgres: LocalPostgres) -> None:
    with tls_postgres.admin_connect() as conn:  # verify-full against ca_path
        assert conn.pgconn.ssl_in_use
    assert "ssl" not in tls_postgres.admin_document()
    plain = {**tls_postgres.tls_params(), "sslmode": "disable"}
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        psycopg.connect(
            host=tls_postgres.host, port=tls_postgres.port, user="postgres",
            password=tls_postgres.admin_password, connect_timeout=5, **plain,
        )  # fmt: skip


def test_local_postgres_in_a_given_directory_keeps_it() -> None:
    # Under /tmp and traversable: as root the postgres OS user must reach it.
    base = Path(tempfile.mkdtemp(prefix="bed-", dir="/tmp"))
    base.chmod(0o755)
    try:
        directory = base / "pg"
        server = LocalPostgres(directory, max_connections=20, settings={"work_mem": "8MB"})
        with server, server.admin_connect() as conn:
            assert conn.execute("show work_mem").fetchone() == ("8MB",)
        assert (directory / "postgres.log").exists()
    finally:
        shutil.rmtree(base)


# -- moto, patched to behave like AWS -------------------------------------------


def test_bed_env_points_default_boto3_clients_at_moto(sm_client: Any) -> None:
    arn, _ = new_secret(sm_client, "hello")
    default_client = boto3.session.Session().client("secretsmanager")
    assert default_client.get_secret_value(SecretId=arn)["SecretString"] == "hello"


def test_moving_awscurrent_changes_what_get_secret_value_returns(sm_client: Any) -> None:
    arn, first = new_secret(sm_client, "old")
    second = token()
    sm_client.put_secret_value(
        SecretId=arn, SecretString="new", ClientRequestToken=second, VersionStages=["AWSPENDING"]
    )
    sm_client.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=second, RemoveFromVersionId=first
    )
    answer = sm_client.get_secret_value(SecretId=arn)
    assert (answer["SecretString"], answer["VersionId"]) == ("new", second)
    assert stages(sm_client, arn)[first] == ["AWSPREVIOUS"]


def test_rotate_secret_with_a_local_lambda_stages_an_empty_pending_version(
    sm_client: Any,
) -> None:
    arn, first = new_secret(sm_client)
    pending = token()
    answer = sm_client.rotate_secret(
        SecretId=arn, ClientRequestToken=pending, RotationLambdaARN=LOCAL_LAMBDA
    )
    assert answer["VersionId"] == pending
    assert stages(sm_client, arn) == {first: ["AWSCURRENT"], pending: ["AWSPENDING"]}
    with pytest.raises(ClientError) as info:
        sm_client.get_secret_value(SecretId=arn, VersionId=pending, VersionStage="AWSPENDING")
    assert error_code(info) == "ResourceNotFoundException"
    described = sm_client.describe_secret(SecretId=arn)
    assert described["RotationEnabled"] is True
    assert described["RotationLambdaARN"] == LOCAL_LAMBDA
    assert sm_client.get_secret_value(SecretId=arn)["VersionId"] == first


def test_rotate_secret_is_refused_while_a_rotation_is_in_progress(sm_client: Any) -> None:
    arn, _ = new_secret(sm_client)
    sm_client.rotate_secret(
        SecretId=arn, ClientRequestToken=token(), RotationLambdaARN=LOCAL_LAMBDA
    )
    with pytest.raises(ClientError) as info:
        sm_client.rotate_secret(SecretId=arn, ClientRequestToken=token())
    assert error_code(info) == "InvalidRequestException"


def test_rotate_secret_after_a_finished_rotation_is_accepted(sm_client: Any) -> None:
    arn, first = new_secret(sm_client)
    done = token()
    sm_client.rotate_secret(SecretId=arn, ClientRequestToken=done, RotationLambdaARN=LOCAL_LAMBDA)
    sm_client.put_secret_value(
        SecretId=arn, SecretString="v2", ClientRequestToken=done, VersionStages=["AWSPENDING"]
    )
    sm_client.update_secret_version_stage(
        SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=done, RemoveFromVersionId=first
    )
    # AWSPENDING and AWSCURRENT on one version is AWS's success state (moto refused it).
    assert sorted(stages(sm_client, arn)[done]) == ["AWSCURRENT", "AWSPENDING"]
    following = token()
    sm_client.rotate_secret(SecretId=arn, ClientRequestToken=following)
    assert stages(sm_client, arn) == {
        first: ["AWSPREVIOUS"],
        done: ["AWSCURRENT"],
        following: ["AWSPENDING"],
    }


def test_rotate_secret_with_another_lambda_keeps_motos_behaviour(sm_client: Any) -> None:
    arn, _ = new_secret(sm_client)
    with pytest.raises(ClientError) as info:
        sm_client.rotate_secret(SecretId=arn, RotationLambdaARN=OTHER_LAMBDA)
    assert error_code(info) == "ResourceNotFoundException"


def test_put_secret_value_with_a_used_token_and_same_value_is_a_no_op(sm_client: Any) -> None:
    arn, _ = new_secret(sm_client)
    version = token()
    for _ in range(2):
        answer = sm_client.put_secret_value(
            SecretId=arn,
            SecretString="v2",
            ClientRequestToken=version,
            VersionStages=["AWSPENDING"],
        )
        assert answer["VersionId"] == version
    assert stages(sm_client, arn)[version] == ["AWSPENDING"]


@pytest.mark.parametrize("stage", ["AWSPENDING", "AWSCURRENT"])
def test_put_secret_value_with_a_used_token_and_other_value_fails(
    sm_client: Any, stage: str
) -> None:
    arn, _ = new_secret(sm_client)
    version = token()
    sm_client.put_secret_value(
        SecretId=arn, SecretString="v2", ClientRequestToken=version, VersionStages=[stage]
    )
    with pytest.raises(ClientError) as info:
        sm_client.put_secret_value(
            SecretId=arn, SecretString="other", ClientRequestToken=version, VersionStages=[stage]
        )
    assert error_code(info) == "ResourceExistsException"
    assert sm_client.get_secret_value(SecretId=arn, VersionId=version)["SecretString"] == "v2"


def test_put_secret_value_fills_the_version_staged_by_rotate_secret(sm_client: Any) -> None:
    arn, _ = new_secret(sm_client)
    pending = token()
    sm_client.rotate_secret(
        SecretId=arn, ClientRequestToken=pending, RotationLambdaARN=LOCAL_LAMBDA
    )
    sm_client.put_secret_value(
        SecretId=arn, SecretString="v2", ClientRequestToken=pending, VersionStages=["AWSPENDING"]
    )
    answer = sm_client.get_secret_value(SecretId=arn, VersionStage="AWSPENDING")
    assert (answer["VersionId"], answer["SecretString"]) == (pending, "v2")


def test_make_secret_stores_the_app_secret_and_its_admin_secret(
    make_secret: Callable[..., str], sm_client: Any, app_schema: AppSchema
) -> None:
    arn = make_secret()
    document = json.loads(sm_client.get_secret_value(SecretId=arn)["SecretString"])
    assert document["username"] == app_schema.users[0]
    admin = json.loads(sm_client.get_secret_value(SecretId=document["masterarn"])["SecretString"])
    assert admin["username"] == "postgres"


# -- the fault proxy ---------------------------------------------------------------


@pytest.fixture
def via_proxy(secretsmanager: LocalSecretsManager, proxy: FaultProxy) -> Any:
    """A quick-failing boto3 client that goes through the proxy."""
    return secretsmanager.client(proxy.endpoint_url, config=QUICK)


def test_proxy_passes_answers_through_and_counts_operations(
    via_proxy: Any, sm_client: Any, proxy: FaultProxy
) -> None:
    arn, _ = new_secret(sm_client, "through")
    assert via_proxy.get_secret_value(SecretId=arn)["SecretString"] == "through"
    via_proxy.get_secret_value(SecretId=arn)
    via_proxy.describe_secret(SecretId=arn)
    with pytest.raises(ClientError) as info:  # errors pass through too
        via_proxy.get_secret_value(SecretId="no-such-secret")
    assert error_code(info) == "ResourceNotFoundException"
    assert proxy.calls == Counter({"GetSecretValue": 3, "DescribeSecret": 1})
    assert proxy.total_calls == 4
    proxy.reset_calls()
    assert proxy.total_calls == 0


def test_proxy_throttles_above_the_rate(via_proxy: Any, proxy: FaultProxy) -> None:
    proxy.throttle(2.0)
    codes = Counter[str]()
    for _ in range(8):
        try:
            via_proxy.list_secrets()
            codes["ok"] += 1
        except ClientError as exc:
            codes[exc.response["Error"]["Code"]] += 1
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            headers = exc.response["ResponseMetadata"]["HTTPHeaders"]
            assert headers["x-amzn-errortype"] == "ThrottlingException"
    # A burst of 2, then about 2 a second: the 8 calls take well under a second.
    assert 2 <= codes["ok"] <= 4
    assert codes["ThrottlingException"] == 8 - codes["ok"]
    assert proxy.throttled["ListSecrets"] == codes["ThrottlingException"]
    proxy.throttle(None)
    via_proxy.list_secrets()


def _answers(call: Callable[[], Any], times: int) -> Counter[str]:
    codes = Counter[str]()
    for _ in range(times):
        try:
            call()
            codes["ok"] += 1
        except ClientError as exc:
            codes[exc.response["Error"]["Code"]] += 1
    return codes


def test_proxy_throttles_each_operation_in_its_own_bucket_at_aws_ratio(
    via_proxy: Any, sm_client: Any, proxy: FaultProxy
) -> None:
    arn, _ = new_secret(sm_client)
    proxy.throttle(2.0)
    assert (proxy.rate_of("GetSecretValue"), proxy.rate_of("DescribeSecret")) == (2.0, 8.0)
    gets = _answers(lambda: via_proxy.get_secret_value(SecretId=arn), 8)
    assert 2 <= gets["ok"] <= 4  # GetSecretValue's bucket (2/s, burst 2) ran dry
    # DescribeSecret's bucket is its own, untouched by the calls above, and four
    # times as large: a burst of 8 answered at once, then 8 a second.
    burst = _answers(lambda: via_proxy.describe_secret(SecretId=arn), 8)
    assert burst["ok"] == 8
    more = _answers(lambda: via_proxy.describe_secret(SecretId=arn), 24)
    assert more["ThrottlingException"] > 0
    assert proxy.throttled["DescribeSecret"] == more["ThrottlingException"]
    assert proxy.throttled["GetSecretValue"] == gets["ThrottlingException"]


def test_proxy_throttle_takes_rates_per_operation(proxy: FaultProxy) -> None:
    proxy.throttle(4.0, rates={"DescribeSecret": 1.0, "ListSecrets": 50.0})
    assert proxy.rate_of("DescribeSecret") == 1.0
    assert proxy.rate_of("ListSecrets") == 50.0
    assert proxy.rate_of("GetSecretValue") == 4.0
    assert proxy.rate_of("PutSecretValue") == 4.0
    with pytest.raises(ValueError, match="positive"):
        proxy.throttle(4.0, rates={"GetSecretValue": 0.0})
    with pytest.raises(ValueError, match="rate_per_second"):
        proxy.throttle(None, rates={"GetSecretValue": 1.0})
    proxy.throttle(None)
    assert proxy.rate_of("GetSecretValue") is None


def test_proxy_hang_times_clients_out_and_restore_answers_503(
    secretsmanager: LocalSecretsManager, via_proxy: Any, proxy: FaultProxy
) -> None:
    impatient = secretsmanager.client(
        proxy.endpoint_url,
        config=Config(connect_timeout=1, read_timeout=0.3, retries={"total_max_attempts": 1}),
    )
    proxy.hang()
    with pytest.raises(ReadTimeoutError):
        impatient.list_secrets()
    patient = secretsmanager.client(
        proxy.endpoint_url,
        config=Config(connect_timeout=1, read_timeout=10, retries={"total_max_attempts": 1}),
    )
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(patient.list_secrets)
        time.sleep(0.2)
        assert not waiting.done()
        proxy.restore()
        with pytest.raises(ClientError) as info:
            waiting.result(timeout=5)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    via_proxy.list_secrets()


def test_proxy_refuse_refuses_connections_and_restore_listens_on_the_same_port(
    via_proxy: Any, proxy: FaultProxy
) -> None:
    endpoint = proxy.endpoint_url
    proxy.refuse()
    with pytest.raises(EndpointConnectionError):
        via_proxy.list_secrets()
    proxy.restore()
    assert proxy.endpoint_url == endpoint
    via_proxy.list_secrets()


def test_proxy_delay_adds_latency(via_proxy: Any, proxy: FaultProxy) -> None:
    proxy.delay(0.3)
    started = time.monotonic()
    via_proxy.list_secrets()
    assert time.monotonic() - started >= 0.3
    proxy.delay(0)


def test_proxy_answers_an_injected_error_for_one_operation(
    via_proxy: Any, sm_client: Any, proxy: FaultProxy
) -> None:
    arn, _ = new_secret(sm_client)
    proxy.answer_error("GetSecretValue", "AccessDeniedException")
    with pytest.raises(ClientError) as info:
        via_proxy.get_secret_value(SecretId=arn)
    assert error_code(info) == "AccessDeniedException"
    via_proxy.describe_secret(SecretId=arn)  # other operations are forwarded
    proxy.restore()
    via_proxy.get_secret_value(SecretId=arn)


def test_proxy_holds_an_operation_until_release(
    secretsmanager: LocalSecretsManager, sm_client: Any, proxy: FaultProxy
) -> None:
    arn, _ = new_secret(sm_client, "held")
    proxy.hold("GetSecretValue")
    assert not proxy.wait_held(1, timeout=0.05)
    clients = [secretsmanager.client(proxy.endpoint_url, config=QUICK) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(c.get_secret_value, SecretId=arn) for c in clients]
        assert proxy.wait_held(2, timeout=5)
        # Other operations go on meanwhile.
        clients[0].describe_secret(SecretId=arn)
        assert not any(future.done() for future in held)
        proxy.release()
        assert [future.result(timeout=5)["SecretString"] for future in held] == ["held"] * 2
    assert proxy.calls["GetSecretValue"] == 2


def test_proxy_stop_answers_hung_requests(
    secretsmanager: LocalSecretsManager,
) -> None:
    with FaultProxy(secretsmanager.endpoint_url) as proxy:
        client = secretsmanager.client(proxy.endpoint_url, config=QUICK)
        proxy.hang()
        errors: list[BaseException] = []

        def call() -> None:
            try:
                client.list_secrets()
            except (ClientError, ReadTimeoutError) as exc:
                errors.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.2)
    caller.join(timeout=5)
    assert not caller.is_alive()
    assert len(errors) == 1
