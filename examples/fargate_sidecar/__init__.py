"""The orders service on ECS Fargate with the Secrets Manager Agent sidecar (see README.md)."""
