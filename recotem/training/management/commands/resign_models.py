"""`recotem manage resign_models`: re-sign stored model artifacts with the current SECRET_KEY."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from recotem.training.services import trained_models_resign


class Command(BaseCommand):
    help = (
        "Re-sign every stored model artifact with the key derived from the current SECRET_KEY "
        "(artifacts signed under a key in RECOTEM_SECRET_KEY_FALLBACKS still verify until then)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        report = trained_models_resign()
        for model_id, reason in report.failed:
            self.stderr.write(f"model #{model_id}: not re-signed: {reason}")
        self.stdout.write(
            f"{report.resigned} artifact(s) re-signed, {report.current} already current, "
            f"{len(report.failed)} failed."
        )
        if report.failed:
            raise CommandError("Some artifacts could not be re-signed; see above.")
