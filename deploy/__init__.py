"""Deployment: the rotation Lambda's zip builder and the CloudFormation templates."""
