"""Data page: upload interactions and item metadata, list them, preview the first rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.front.forms import UploadForm
from recotem.front.views.common import get_project, project_context
from recotem.ml.data import TEXT_FORMATS, InteractionDataError, detect_format, read_table
from recotem.projects import services
from recotem.projects.models import ItemMetaData, TrainingData

PREVIEW_ROWS = 20


@login_required
def data_page(request: HttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    return render(request, "front/data.html", _context(project))


def _context(project: Any, **extra: Any) -> dict[str, Any]:
    return project_context(
        project,
        "data",
        training_data=project.training_data.all()[:50],
        item_meta=project.item_meta_data.all()[:20],
        upload_form=extra.pop("upload_form", UploadForm(prefix="data")),
        meta_form=extra.pop("meta_form", UploadForm(prefix="meta")),
        **extra,
    )


@login_required
@require_POST
def data_upload(request: HttpRequest, pk: int, kind: str) -> HttpResponse:
    """Validate and store an upload.

    XHR requests (the progress-bar form) get an HTML fragment with the inline error and
    status 400, or an `X-Upload-Redirect` header on success; plain form posts get the page.
    """
    project = get_project(request, pk)
    if kind not in ("data", "meta"):
        raise Http404("Unknown upload kind.")
    prefix = kind
    form = UploadForm(request.POST, request.FILES, prefix=prefix)
    service = services.training_data_create if kind == "data" else services.item_meta_data_create
    created = None
    if form.is_valid():
        try:
            created = service(project=project, upload=form.cleaned_data["file"])
        except ApplicationError as exc:
            form.add_error("file", exc.message)
    is_xhr = request.headers.get("X-Requested-With") == "XMLHttpRequest"
    if created is not None:
        target = reverse("front:data", args=[project.pk]) + (f"?preview={created.pk}" if kind == "data" else "")
        if is_xhr:
            response = render(request, "front/data_upload_result.html", {"form": form, "created": created})
            response["X-Upload-Redirect"] = target
            return response
        return redirect(target)
    if is_xhr:
        return render(request, "front/data_upload_result.html", {"form": form}, status=400)
    extra = {"upload_form": form} if kind == "data" else {"meta_form": form}
    return render(request, "front/data.html", _context(project, **extra), status=400)


@login_required
def data_preview(request: HttpRequest, pk: int, kind: str, obj_id: int) -> HttpResponse:
    """The first rows of a stored file as a table fragment (loaded lazily by htmx)."""
    project = get_project(request, pk)
    if kind not in ("data", "meta"):
        raise Http404("Unknown data kind.")
    model = TrainingData if kind == "data" else ItemMetaData
    instance = get_object_or_404(model, pk=obj_id, project=project)
    columns: list[str] = []
    rows: list[list[Any]] = []
    error = ""
    try:
        head = _head(instance, project)
        head = head.astype(object).where(pd.notna(head), None)
        columns = [str(c) for c in head.columns]
        rows = head.values.tolist()
    except (InteractionDataError, OSError, ValueError, NotImplementedError) as exc:
        error = str(exc)
    return render(
        request,
        "front/data_preview.html",
        {"instance": instance, "columns": columns, "rows": rows, "error": error, "project": project},
    )


def _head(instance: TrainingData | ItemMetaData, project: Any) -> pd.DataFrame:
    """Read only the first rows of text files: a 100 MB upload must not slow the page down."""
    suffix, gzipped = detect_format(instance.original_name)
    path = Path(instance.file.path)
    if suffix in TEXT_FORMATS:
        return pd.read_csv(
            path,
            sep=TEXT_FORMATS[suffix],
            nrows=PREVIEW_ROWS,
            dtype=str,
            compression="gzip" if gzipped else None,
            encoding="utf-8-sig",
            skipinitialspace=True,
        )
    df = read_table(
        path,
        required_columns=[],
        string_columns=[project.user_column, project.item_column],
        original_name=instance.original_name,
        all_columns=True,
    )
    return df.head(PREVIEW_ROWS)
