"""deploy/iam-people-account.yaml: rds-db:connect as one named user, nothing more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.test_deploy_templates import DEPLOY, Template

NAME = "iam-people-account.yaml"


def test_the_policy_allows_connect_as_the_named_user_on_the_named_database_only():
    template = Template(NAME, DbResourceId="db-ABCDEFGHIJKLMNOPQRSTUVWXY1", DbUser="alice")
    (policy,) = template.resources_of_type("AWS::IAM::ManagedPolicy")
    (statement,) = template.properties(policy)["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] == "rds-db:connect"
    assert statement["Resource"] == (
        "arn:aws:rds-db:${AWS_REGION}:${AWS_ACCOUNT_ID}:dbuser:db-ABCDEFGHIJKLMNOPQRSTUVWXY1/alice"
    )


def test_the_template_lints():
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        [str(cfn_lint), str(DEPLOY / NAME)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
