from __future__ import annotations

import shutil
import subprocess

import yaml

from conftest import REPO_ROOT


def test_it_describes_the_scale_out_layout_in_compose_yaml() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(services)
    images = {services[name]["image"] for name in ("web", "worker", "beat")}
    assert images == {"recotem:latest"}, "web, worker and beat share one image"
    from celery.utils.imports import symbol_by_name
    from django_celery_beat.schedulers import DatabaseScheduler

    assert issubclass(symbol_by_name(services["beat"]["command"][-1]), DatabaseScheduler)
    assert services["worker"]["command"][:4] == ["celery", "-A", "recotem", "worker"]
    env = services["web"]["environment"]
    assert env["DATABASE_URL"].startswith("postgresql://") and env["CELERY_BROKER_URL"].startswith("redis://")
    assert (REPO_ROOT / "Dockerfile").exists()
    _docker_compose_config_where_available()


def _docker_compose_config_where_available() -> None:
    docker = shutil.which("docker")
    has_compose = docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    if not has_compose:
        # Only the docker client may be present (no compose plugin); the YAML test above still ran.
        return
    result = subprocess.run(
        [docker, "compose", "-f", str(REPO_ROOT / "compose.yaml"), "config", "--quiet"],
        capture_output=True, text=True, env={"SECRET_KEY": "x", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
