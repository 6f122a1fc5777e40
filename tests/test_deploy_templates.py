"""The CloudFormation templates in deploy/ against what the project documents.

`cfn-lint` checks the templates against CloudFormation's schemas (`make lint`).
These tests check what no schema knows: the Fargate task definition is the
example's `task-definition.json`, the roles allow exactly the IAM actions the
deploy guide (docs/guides/deploy.md, and the example's policy files) documents,
scoped as documented, and the rotation function is configured with the variables
the reference lists (docs/reference/lambda-environment.md).
Templates are evaluated with a small resolver of Ref, Fn::Sub, Fn::GetAtt and
Fn::If, parameters taken from their defaults unless a test sets them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

from deploy.build_lambda_zip import DEFAULT_PYTHON as LAMBDA_PYTHON

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
EXAMPLE = ROOT / "examples" / "fargate_sidecar"
DEPLOY_GUIDE = ROOT / "docs" / "guides" / "deploy.md"
LAMBDA_ENVIRONMENT = ROOT / "docs" / "reference" / "lambda-environment.md"

# The example's JSON files are filled by envsubst with these names.
PLACEHOLDERS = {
    "AWS::Region": "${AWS_REGION}",
    "AWS::AccountId": "${AWS_ACCOUNT_ID}",
    "AWS::Partition": "aws",
    "AWS::StackName": "stack",
}
FARGATE_PARAMS = {
    "AppImageTag": "${IMAGE_TAG}",
    "AgentImageTag": "${AGENT_IMAGE_TAG}",
    "SecretKmsKeyArn": "arn:aws:kms:${AWS_REGION}:${AWS_ACCOUNT_ID}:key/${SECRET_KMS_KEY_ID}",
}
APP_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app/db-AbCdEf"
ADMIN_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:db-admin-GhIjKl"
KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ROTATION_PARAMS = {"AppSecretArn": APP_SECRET, "AdminSecretArn": ADMIN_SECRET, "KmsKeyArn": KMS_KEY}

_NO_VALUE = object()


class Template:
    """A template with its parameters set: `resolve` evaluates intrinsic functions."""

    def __init__(self, name: str, **params: str) -> None:
        self.body: dict[str, Any] = cfn_yaml.loads((DEPLOY / name).read_text(), str(DEPLOY / name))
        self.params = {k: v.get("Default") for k, v in self.body["Parameters"].items()}
        self.params.update(PLACEHOLDERS, **params)

    def properties(self, resource: str) -> dict[str, Any]:
        resolved = self.resolve(self.body["Resources"][resource]["Properties"])
        assert isinstance(resolved, dict)
        return resolved

    def resources_of_type(self, kind: str) -> list[str]:
        return [n for n, r in self.body["Resources"].items() if r["Type"] == kind]

    def condition(self, name: str) -> bool:
        return self._test(self.body["Conditions"][name])

    def _test(self, expr: Any) -> bool:
        ((function, args),) = expr.items()
        if function == "Fn::Equals":
            return bool(self.resolve(args[0]) == self.resolve(args[1]))
        if function == "Fn::Not":
            return not self._test(args[0])
        if function == "Fn::And":
            return all(self._test(a) for a in args)
        if function == "Fn::Or":
            return any(self._test(a) for a in args)
        if function == "Condition":
            return self.condition(args)
        raise AssertionError(f"condition function {function} unknown to this resolver")

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.params:
            return self.params[name]
        resource = self.body["Resources"][name]
        if resource["Type"] == "AWS::Logs::LogGroup":
            return self.resolve(resource["Properties"]["LogGroupName"])
        return f"<{name}>"

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if len(value) == 1:
                ((key, args),) = value.items()
                if key == "Ref":
                    return self.ref(args)
                if key == "Fn::GetAtt":
                    return "<{}.{}>".format(*args)
                if key == "Fn::If":
                    return self.resolve(args[1] if self.condition(args[0]) else args[2])
                if key == "Fn::Sub":
                    return re.sub(r"\$\{([^}!]+)\}", self._sub, args)
            items = ((k, self.resolve(v)) for k, v in value.items())
            return {k: v for k, v in items if v is not _NO_VALUE}
        if isinstance(value, list):
            return [v for v in map(self.resolve, value) if v is not _NO_VALUE]
        return value

    def _sub(self, match: re.Match[str]) -> str:
        name = match.group(1)
        return f"<{name}>" if "." in name else str(self.ref(name))


def camel(value: Any, *, keep_keys: bool = False) -> Any:
    """CloudFormation's PascalCase property names as ECS's API spells them."""
    if isinstance(value, dict):
        return {
            (k if keep_keys else k[0].lower() + k[1:]): camel(v, keep_keys=k == "Options")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [camel(v) for v in value]
    return value


def documented_policies() -> list[dict[str, Any]]:
    """Every IAM policy document in the deploy guide's ```json blocks."""
    blocks = re.findall(r"```json\n(.*?)```", DEPLOY_GUIDE.read_text(), re.S)
    return [doc for doc in map(json.loads, blocks) if "Statement" in doc]


def documented(sid: str) -> dict[str, Any]:
    """The deploy guide's policy that has a statement `sid`."""
    (policy,) = [p for p in documented_policies() if sid in {s.get("Sid") for s in p["Statement"]}]
    return policy


def actions(statements: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Sid -> sorted actions."""
    def listed(a: str | list[str]) -> list[str]:
        return sorted([a] if isinstance(a, str) else a)

    return {s["Sid"]: listed(s["Action"]) for s in statements}


def inline_statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]


# -- the Fargate service -----------------------------------------------------------


def test_the_task_definition_is_the_examples():
    template = Template("fargate-service.yaml", **FARGATE_PARAMS)
    (name,) = template.resources_of_type("AWS::ECS::TaskDefinition")
    ours = camel(template.properties(name))
    theirs = json.loads((EXAMPLE / "task-definition.json").read_text())

    assert ours.pop("executionRoleArn") == "<ExecutionRole.Arn>"
    assert ours.pop("taskRoleArn") == "<TaskRole.Arn>"
    for key in ("executionRoleArn", "taskRoleArn"):
        theirs.pop(key)
    # Containers one by one first, for a readable difference; then everything.
    assert [c["name"] for c in ours["containerDefinitions"]] == [
        c["name"] for c in theirs["containerDefinitions"]
    ]
    pairs = zip(ours["containerDefinitions"], theirs["containerDefinitions"], strict=True)
    for mine, example in pairs:
        assert mine == example
    assert ours == theirs


def test_the_task_role_is_the_examples_policy_and_trust():
    template = Template("fargate-service.yaml", **FARGATE_PARAMS)
    role = template.properties("TaskRole")
    policy = json.loads((EXAMPLE / "iam-task-role-policy.json").read_text())
    trust = json.loads((EXAMPLE / "iam-task-trust-policy.json").read_text())

    assert inline_statements(role) == policy["Statement"]
    assert role["AssumeRolePolicyDocument"] == trust
    assert "ManagedPolicyArns" not in role


def test_the_task_role_reads_no_key_when_the_secret_uses_the_aws_managed_one():
    template = Template("fargate-service.yaml", **{**FARGATE_PARAMS, "SecretKmsKeyArn": ""})
    assert list(actions(inline_statements(template.properties("TaskRole")))) == [
        "ReadTheDatabaseSecret"
    ]


def test_the_execution_role_allows_what_the_deploy_guide_documents():
    template = Template("fargate-service.yaml", **FARGATE_PARAMS)
    role = template.properties("ExecutionRole")
    guide = documented("PullTheImages")

    assert actions(inline_statements(role)) == actions(guide["Statement"])
    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"] == json.loads(
        (EXAMPLE / "iam-task-trust-policy.json").read_text()
    )


def test_the_service_runs_in_private_subnets_behind_the_target_group():
    template = Template("fargate-service.yaml", TargetGroupArn="arn:tg")
    service = template.properties("Service")
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    assert service["LoadBalancers"] == [
        {"TargetGroupArn": "arn:tg", "ContainerName": "app", "ContainerPort": 8000}
    ]
    without = Template("fargate-service.yaml").properties("Service")
    assert "LoadBalancers" not in without
    assert "HealthCheckGracePeriodSeconds" not in without


# -- the rotation function -----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["alternating", "single"])
@pytest.mark.parametrize("kms", [True, False])
def test_the_rotation_role_allows_what_the_deploy_guide_documents(strategy: str, kms: bool):
    params = {**ROTATION_PARAMS, "Strategy": strategy, "KmsKeyArn": KMS_KEY if kms else ""}
    role = Template("rotation.yaml", **params).properties("RotationRole")
    guide = actions(documented("RotateTheAppSecret")["Statement"])
    # The guide says which statements apply when (admin and RDS: alternating; key: a CMK).
    expected = {
        sid: acts for sid, acts in guide.items()
        if (strategy == "alternating" or sid not in {"ReadTheAdminSecret", "FindTheRdsEndpoint"})
        and (kms or sid != "SecretsKey")
    }

    assert actions(inline_statements(role)) == expected
    assert role["ManagedPolicyArns"] == [
        "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
    ]
    assert "AWSLambdaVPCAccessExecutionRole" in DEPLOY_GUIDE.read_text()


def test_the_rotation_role_is_scoped_to_the_two_secrets_and_the_key():
    role = Template("rotation.yaml", **ROTATION_PARAMS).properties("RotationRole")
    resources = {s["Sid"]: s["Resource"] for s in inline_statements(role)}
    assert resources["RotateTheAppSecret"] == APP_SECRET
    assert resources["ReadTheAdminSecret"] == ADMIN_SECRET
    assert resources["SecretsKey"] == KMS_KEY
    # Only GetRandomPassword, which names no resource, is allowed on "*".
    assert [sid for sid, r in resources.items() if "*" in r] == ["NewPasswords"]
    assert all(r.startswith("arn:aws:rds:") for r in resources["FindTheRdsEndpoint"])


def test_only_secrets_manager_may_invoke_the_function_for_this_secret():
    template = Template("rotation.yaml", **ROTATION_PARAMS)
    permission = template.properties("SecretsManagerInvokePermission")
    assert permission["Principal"] == "secretsmanager.amazonaws.com"
    assert permission["SourceArn"] == APP_SECRET
    assert permission["Action"] == "lambda:InvokeFunction"
    schedule = template.body["Resources"]["RotationSchedule"]
    assert schedule["DependsOn"] == "SecretsManagerInvokePermission"
    assert template.properties("RotationSchedule")["RotationLambdaARN"] == "<RotationFunction.Arn>"


def test_the_function_runs_the_tested_zip_in_the_vpc():
    function = Template("rotation.yaml", **ROTATION_PARAMS).properties("RotationFunction")
    assert function["Handler"] == "rotating_pool.rotation.lambda_handler"
    # The runtime the bundle test runs the zip with, and the zip `make lambda-zip` builds for it.
    assert function["Runtime"] == f"python{LAMBDA_PYTHON}"
    (arch,) = function["Architectures"]
    assert function["CodeUri"] == f"../dist/lambda/rotation-py{LAMBDA_PYTHON}-{arch}.zip"
    assert set(function["VpcConfig"]) == {"SubnetIds", "SecurityGroupIds"}
    assert "Role" in function


def test_the_function_sets_every_variable_the_reference_documents():
    function = Template("rotation.yaml", **ROTATION_PARAMS).properties("RotationFunction")
    section = LAMBDA_ENVIRONMENT.read_text()
    table = section[section.index("\n| variable |") :].split("\n\n", 1)[0]
    documented_names = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", table, re.M))
    assert "SSL_ROOT_CERT" in documented_names
    # SECRETS_MANAGER_ENDPOINT is set only when given (empty means the regional endpoint).
    assert set(function["Environment"]["Variables"]) == documented_names - {
        "SECRETS_MANAGER_ENDPOINT"
    }
    with_endpoint = Template(
        "rotation.yaml", **ROTATION_PARAMS, SecretsManagerEndpoint="https://vpce.example"
    ).properties("RotationFunction")
    assert set(with_endpoint["Environment"]["Variables"]) == documented_names


# -- private subnets ------------------------------------------------------------------


@pytest.mark.parametrize("for_fargate", ["true", "false"])
def test_private_subnets_get_the_endpoints_their_clients_call(for_fargate: str):
    template = Template("vpc-endpoints.yaml", ForFargate=for_fargate)
    services = {
        template.properties(name)["ServiceName"].split(".", 3)[3]
        for name in template.resources_of_type("AWS::EC2::VPCEndpoint")
        if "Condition" not in template.body["Resources"][name]
        or template.condition(template.body["Resources"][name]["Condition"])
    }
    rotation = {"secretsmanager", "rds"}
    fargate = {"sts", "ecr.api", "ecr.dkr", "logs", "s3"}
    assert services == (rotation | fargate if for_fargate == "true" else rotation)
