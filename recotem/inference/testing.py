"""Build a servable world (user, project, trained models, slots, a predict key) through the real
services; used by the inference tests and by bench/inference.py.

Also a small CLI so a test or benchmark can prepare and change a database that a separate
inference process reads (run it with the same RECOTEM_DATA_DIR / DATABASE_URL):

    python -m recotem.inference.testing setup --csv data.csv --models IALS:{} TopPop:{} --weights 100 0
    python -m recotem.inference.testing set-model --slot 1 --model 2
    python -m recotem.inference.testing corrupt --model 3
    python -m recotem.inference.testing experiment --control 1 --variant 2   # create + start
    python -m recotem.inference.testing results --experiment 1
    python -m recotem.inference.testing end-canary --experiment 3   # its window ends now
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recotem.testing import processes

if TYPE_CHECKING:
    from recotem.projects.models import Project, TrainingData
    from recotem.training.models import TrainedModel


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recotem.settings")
    import django

    django.setup()


def train(
    project: Project, data: TrainingData, class_name: str, params: dict[str, Any] | None = None
) -> TrainedModel:
    """A COMPLETED TrainedModel with a signed artifact, trained synchronously."""
    from recotem.core.jobs import JobStatus
    from recotem.training.models import ModelConfiguration
    from recotem.training.services import trained_model_create, trained_model_train

    n = ModelConfiguration.objects.filter(project=project).count()
    config = ModelConfiguration.objects.create(
        project=project,
        name=f"{class_name}-{n}",
        recommender_class_name=class_name,
        parameters_json=params or {},
    )
    model = trained_model_create(configuration=config, data=data, enqueue=False)
    model = trained_model_train(trained_model_id=model.pk)
    assert model.status == JobStatus.COMPLETED, model.error
    return model


def build_world(
    *,
    csv: Path,
    models: list[tuple[str, dict[str, Any]]],
    weights: list[int] | None = None,
    username: str = "bench",
    item_metadata: Path | None = None,
) -> dict[str, Any]:
    """One project trained on `csv`, a model per entry of `models`, a slot per weight, a key."""
    from django.contrib.auth.models import User

    from recotem.accounts.services import api_key_create
    from recotem.deployment.services import slot_create
    from recotem.projects.models import Project
    from recotem.projects.services import training_data_create_from_frame_file

    user, _ = User.objects.get_or_create(username=username)
    project = Project.objects.create(
        owner=user,
        name=f"project-{Project.objects.count() + 1}",
        user_column="user_id",
        item_column="item_id",
    )
    data = training_data_create_from_frame_file(project=project, path=Path(csv), name="data.csv")
    trained = [train(project, data, name, params) for name, params in models]
    slots = []
    for i, weight in enumerate(weights or []):
        slot = slot_create(
            project=project,
            name=f"slot-{i}",
            trained_model=trained[min(i, len(trained) - 1)],
            weight=weight,
        )
        slots.append(slot.pk)
    _, raw = api_key_create(project=project, name="predict", scopes=["predict"])
    if item_metadata is not None:
        from django.core.files.uploadedfile import SimpleUploadedFile

        from recotem.projects.services import item_meta_data_create

        item_meta_data_create(
            project=project,
            upload=SimpleUploadedFile(item_metadata.name, item_metadata.read_bytes()),
        )
    return {
        "project_id": project.pk,
        "model_ids": [m.pk for m in trained],
        "slot_ids": slots,
        "key": raw,
    }


def corrupt(model_id: int) -> None:
    """Flip bytes in the middle of an artifact: its signature no longer verifies."""
    from recotem.training.models import TrainedModel

    model = TrainedModel.objects.get(pk=model_id)
    with model.file.open("rb") as fh:
        data = bytearray(fh.read())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    name = model.file.name
    assert name is not None, f"model {model_id} has no artifact"
    storage = model.file.storage
    storage.delete(name)
    storage.save(name, __import__("io").BytesIO(bytes(data)))


def end_canary_window(experiment_id: int) -> None:
    """Move a canary's window end to a second ago (database time), as if its minutes had
    passed: the next periodic decision (``decide_canaries``) decides it."""
    from datetime import timedelta

    from recotem.core.jobs import db_now
    from recotem.experiments.models import Experiment

    moved = Experiment.objects.filter(
        pk=experiment_id, status=Experiment.Status.RUNNING, canary_ends_at__isnull=False
    ).update(canary_ends_at=db_now() - timedelta(seconds=1))
    if moved != 1:
        raise SystemExit(f"experiment {experiment_id} is not a running canary")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recotem.inference.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    setup = sub.add_parser("setup")
    setup.add_argument("--csv", required=True)
    setup.add_argument("--models", nargs="+", default=["IALS:{}"], help="Class:JSON-params")
    setup.add_argument("--weights", nargs="*", type=int, default=[100])
    setup_model = sub.add_parser("set-model")
    setup_model.add_argument("--slot", type=int, required=True)
    setup_model.add_argument("--model", type=int, required=True)
    bad = sub.add_parser("corrupt")
    bad.add_argument("--model", type=int, required=True)
    exp = sub.add_parser("experiment")
    exp.add_argument("--control", type=int, required=True)
    exp.add_argument("--variant", type=int, required=True)
    res = sub.add_parser("results")
    res.add_argument("--experiment", type=int, required=True)
    end = sub.add_parser("end-canary")
    end.add_argument("--experiment", type=int, required=True)
    args = parser.parse_args(argv)

    _setup_django()
    if args.command == "setup":
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        models = []
        for spec in args.models:
            name, _, params = spec.partition(":")
            models.append((name, json.loads(params or "{}")))
        print(json.dumps(build_world(csv=Path(args.csv), models=models, weights=args.weights)))
    elif args.command == "set-model":
        from recotem.deployment.models import DeploymentSlot
        from recotem.deployment.services import slot_set_model
        from recotem.training.models import TrainedModel

        slot_set_model(
            slot=DeploymentSlot.objects.get(pk=args.slot),
            trained_model=TrainedModel.objects.get(pk=args.model),
            changed_by="test",
        )
    elif args.command == "corrupt":
        corrupt(args.model)
    elif args.command == "end-canary":
        end_canary_window(args.experiment)
    elif args.command in ("experiment", "results"):
        from recotem.deployment.models import DeploymentSlot
        from recotem.experiments.models import Experiment
        from recotem.experiments.services import (
            experiment_create,
            experiment_results,
            experiment_start,
        )

        if args.command == "experiment":
            control = DeploymentSlot.objects.get(pk=args.control)
            experiment = experiment_start(
                experiment_create(
                    project=control.project,
                    name="test",
                    control_slot=control,
                    variant_slot=DeploymentSlot.objects.get(pk=args.variant),
                )
            )
            print(json.dumps({"experiment_id": experiment.pk}))
        else:
            result = experiment_results(Experiment.objects.get(pk=args.experiment))
            print(json.dumps(result.as_dict(), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- helpers for tests and benchmarks that run real processes -------------------------------


# The generic parts live in recotem.testing.processes; these names stay for bench/inference.py.
free_port = processes.free_port


def isolated_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Environment for child processes on their own SQLite database under `data_dir`."""
    return processes.process_env(
        data_dir, DJANGO_SETTINGS_MODULE="recotem.settings", RECOTEM_LOG_LEVEL="WARNING", **extra
    )


def run_cli(env: dict[str, str], *args: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "recotem.inference.testing", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"testing {args[0]} failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def start_server(
    app: str, env: dict[str, str], port: int, *, timeout: float = 30
) -> subprocess.Popen[bytes]:
    """`uvicorn app` on 127.0.0.1:port, as `recotem inference` runs it; waits until it answers."""
    proc = processes.start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env,
    )
    try:
        # Any answer will do: /health may be 503 while nothing is deployed yet.
        processes.wait_http_ok(
            f"http://127.0.0.1:{port}/inference/health", timeout, proc, any_status=True
        )
    except (RuntimeError, TimeoutError):
        processes.stop(proc, timeout=5)
        raise
    return proc


def stop_server(proc: Any) -> None:
    processes.stop(proc, timeout=10)
