"""Writes for projects and their data. Uploads are validated before anything is stored."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.core.files import File
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import ProtectedError, RestrictedError

from recotem.core.exceptions import ApplicationError
from recotem.core.files import delete_stored, local_upload
from recotem.ml.datafile import DataLimitExceeded, InteractionDataError
from recotem.ml.summarize_file import SummaryProcessError, summarize_in_subprocess
from recotem.projects.limits import DataTooLarge, data_limits
from recotem.projects.models import ItemMetaData, Project, TrainingData

logger = logging.getLogger(__name__)

_Stored = TypeVar("_Stored", TrainingData, ItemMetaData)


class UploadTooLarge(ApplicationError):
    def __init__(self, size: int) -> None:
        limit = settings.RECOTEM_MAX_UPLOAD_MB
        super().__init__(
            f"The file is {size / 1024 / 1024:.1f} MB; the limit is {limit} MB "
            "(RECOTEM_MAX_UPLOAD_MB).",
            field="file",
            status=413,
        )


def _check_size(upload: UploadedFile[bytes]) -> None:
    if upload.size is not None and upload.size > settings.RECOTEM_MAX_UPLOAD_MB * 1024 * 1024:
        raise UploadTooLarge(upload.size)


def training_data_create(*, project: Project, upload: UploadedFile[bytes]) -> TrainingData:
    """Validate an uploaded interaction file, then store it and its summary.

    Steps: size check; parse only the project's columns (ids as strings), stopping with a
    413 as soon as the data passes RECOTEM_MAX_UNCOMPRESSED_MB or RECOTEM_MAX_ROWS; summarise
    (rows, users, items, content fingerprint); store the original file through the storage
    API and create the row in one transaction. On any failure nothing is left behind: the row
    is rolled back and a stored file is deleted.

    The parse and summary run in a short-lived child process (recotem.ml.summarize_file): a
    93 MB CSV costs its parser ~700 MB, which a long-lived web process would otherwise keep,
    and the web process never imports pandas or pyarrow for it.
    """
    _check_size(upload)
    name = os.path.basename(upload.name or "data.csv")
    with local_upload(upload) as path:
        try:
            summary = summarize_in_subprocess(
                path, original_name=name, **project.columns, **data_limits(path, name)
            )
        except DataLimitExceeded as exc:
            raise DataTooLarge(exc) from None
        except InteractionDataError as exc:
            raise ApplicationError(str(exc), field="file") from None
        except SummaryProcessError:
            logger.exception("parsing upload %r failed", name)
            raise
        return _store(
            TrainingData,
            path=path,
            name=name,
            project=project,
            original_name=name,
            row_count=summary.row_count,
            n_users=summary.n_users,
            n_items=summary.n_items,
            fingerprint=summary.fingerprint,
        )


def training_data_create_from_frame_file(
    *, project: Project, path: Path, name: str, data_source_id: int | None = None
) -> TrainingData:
    """Store an already-written local file (a data source snapshot) as training data.

    Raises DataLimitExceeded / InteractionDataError like ``read_interactions``.
    """
    from recotem.ml.data import read_interactions, summarize  # called in workers: load here

    # Written by Recotem itself (a SQL result, or a download already read once): the
    # configured limits apply, the inflate ratio (a guard against crafted files) does not.
    df = read_interactions(path, original_name=name, **project.columns, **data_limits())
    summary = summarize(df, **project.columns)
    return _store(
        TrainingData,
        path=path,
        name=name,
        project=project,
        original_name=name,
        row_count=summary.row_count,
        n_users=summary.n_users,
        n_items=summary.n_items,
        fingerprint=summary.fingerprint,
        data_source_id=data_source_id,
    )


def item_meta_data_create(*, project: Project, upload: UploadedFile[bytes]) -> ItemMetaData:
    from recotem.ml.data import read_table

    _check_size(upload)
    name = os.path.basename(upload.name or "items.csv")
    with local_upload(upload) as path:
        try:
            df = read_table(
                path,
                required_columns=[project.item_column],
                string_columns=[project.item_column],
                original_name=name,
                all_columns=True,
                **data_limits(path, name),
            )
        except DataLimitExceeded as exc:
            raise DataTooLarge(exc) from None
        except InteractionDataError as exc:
            raise ApplicationError(str(exc), field="file") from None
        return _store(
            ItemMetaData,
            path=path,
            name=name,
            project=project,
            original_name=name,
            row_count=len(df),
            columns=[str(c) for c in df.columns],
        )


def _store(model: type[_Stored], *, path: Path, name: str, **fields: object) -> _Stored:
    """Save the file and the row together; delete the file if the row cannot be committed."""
    instance = model(filesize=path.stat().st_size, **fields)
    with open(path, "rb") as fh:
        instance.file.save(name, File(fh, name=name), save=False)
    try:
        with transaction.atomic():
            instance.save()
    except Exception:
        instance.file.delete(save=False)
        raise
    return instance


def project_delete(*, project: Project) -> None:
    """Delete a project, its rows (cascade) and the files they point to."""
    files = [td.file for td in project.training_data.all()] + [
        m.file for m in project.item_meta_data.all()
    ]
    files += [tm.file for tm in project.trained_models.all() if tm.file]
    with transaction.atomic():
        project.delete()
    delete_stored(files)


def stored_object_delete(*, instance: TrainingData | ItemMetaData) -> None:
    """Delete an uploaded file's row, then the file (a row still referenced raises first)."""
    file = instance.file
    with transaction.atomic():
        instance.delete()
    delete_stored([file])


def snapshots_retain(*, project_id: int, keep: int, protected: set[int]) -> list[int]:
    """Delete data-source snapshots beyond the newest ``keep``, except the ``protected`` ids and
    any a trained model still references; their files go too. Uploads are never touched.
    Returns the deleted ids."""
    old = TrainingData.objects.filter(project_id=project_id, data_source__isnull=False).order_by(
        "-id"
    )[keep:]
    deleted: list[int] = []
    for snapshot in old:
        if snapshot.pk in protected or snapshot.trained_models.exists():
            continue
        file = snapshot.file
        try:
            with transaction.atomic():
                snapshot_id = snapshot.pk
                snapshot.delete()
        except (ProtectedError, RestrictedError):
            continue
        delete_stored([file])
        deleted.append(snapshot_id)
    return deleted
