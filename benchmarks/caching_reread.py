"""Why the client path reads by version instead of through aws-secretsmanager-caching.

A process that recovered from a refused login has already read the new
AWSCURRENT. aws-secretsmanager-caching's `SecretCache` does not say which
version it holds, so when its TTL runs out it sees AWSCURRENT moved and reads
the same version again. rotating_pool's `SecretsManagerSource` remembers the
versions it read, so its next refresh costs one DescribeSecret and no read.

Usage: ``python -m benchmarks.caching_reread [--rotations N]``: prints the
Secrets Manager calls of each, over N rotations, each followed by a recovery
(a direct read of the new version) and one steady-state refresh.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid

from aws_secretsmanager_caching import SecretCache, SecretCacheConfig

from rotating_pool.reads import Read
from rotating_pool.secret import AWSCURRENT, Credentials
from rotating_pool.sources import SecretsManagerSource
from rotating_pool.testing import FaultProxy, LocalSecretsManager


def measure(rotations: int) -> dict[str, dict[str, int]]:
    """Calls per client over `rotations` rotations (recovery + one refresh each)."""
    results: dict[str, dict[str, int]] = {}
    with LocalSecretsManager() as moto:
        admin = moto.client()
        for name in ("aws-secretsmanager-caching", "rotating_pool"):
            secret = admin.create_secret(
                Name=f"bench/reread-{uuid.uuid4().hex[:8]}",
                SecretString=json.dumps({"username": "app", "password": "pw-0"}),
            )["ARN"]
            with FaultProxy(moto.endpoint_url) as proxy:
                client = moto.client(endpoint_url=proxy.endpoint_url)
                cache = SecretCache(SecretCacheConfig(secret_refresh_interval=1), client=client)
                source = SecretsManagerSource(secret, client=client)
                held: Credentials | None = source.load() if name == "rotating_pool" else None
                if held is None:
                    cache.get_secret_string(secret)
                proxy.reset_calls()
                for rotation in range(1, rotations + 1):
                    version = admin.put_secret_value(
                        SecretId=secret,
                        SecretString=json.dumps({"username": "app", "password": f"pw-{rotation}"}),
                    )["VersionId"]
                    # The recovery: a direct read of the new version, as a refused login does.
                    if name == "rotating_pool":
                        held = source.read(Read(version, AWSCURRENT))
                        # The next steady-state refresh.
                        assert source.poll(held) is None
                    else:
                        client.get_secret_value(SecretId=secret, VersionId=version)
                        time.sleep(1.1)  # the cache's TTL (it refreshes after ttl/2..ttl)
                        cache.get_secret_string(secret)
                results[name] = dict(proxy.calls)
    return results


def main() -> None:
    """Print the calls of each client per rotation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=5)
    args = parser.parse_args()
    results = measure(args.rotations)
    print(f"Secrets Manager calls over {args.rotations} rotations (recovery + one refresh each):")
    for name, calls in results.items():
        per = {api: round(count / args.rotations, 2) for api, count in sorted(calls.items())}
        print(f"  {name:28} {per} per rotation")


if __name__ == "__main__":
    main()
