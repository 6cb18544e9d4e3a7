"""A configured address or RAY_ADDRESS joins an existing Ray cluster instead of starting one."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.real

HEAD = textwrap.dedent(
    """
    import os, subprocess, sys
    import ray
    ray.init(num_cpus=1, include_dashboard=False, namespace="conclave")
    address = ray.get_runtime_context().gcs_address
    join = '''
    import sys, ray
    from orchestrator.config import ClusterConfig
    from workers.cluster import ensure_ray
    ensure_ray(ClusterConfig(address=sys.argv[1] or None))
    print(ray.get_runtime_context().gcs_address)
    '''
    via_config = subprocess.run([sys.executable, "-c", join, address], capture_output=True,
                                text=True, check=True).stdout.split()[-1]
    env = {**os.environ, "RAY_ADDRESS": address}
    via_env = subprocess.run([sys.executable, "-c", join, ""], capture_output=True, text=True,
                             check=True, env=env).stdout.split()[-1]
    print(address, via_config, via_env)
    """
)


def test_address_and_env_join_the_running_cluster():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", HEAD], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    address, via_config, via_env = out.stdout.split()[-3:]
    assert via_config == address and via_env == address
