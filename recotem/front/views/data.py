"""Data page: upload interactions and item metadata, list them, preview the first rows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from recotem.core.exceptions import ApplicationError
from recotem.core.files import local_file
from recotem.experiments.reports import events_per_day
from recotem.front.forms import EventsSourceForm, UploadForm
from recotem.front.http import AuthenticatedHttpRequest
from recotem.front.views.common import add_service_error, get_project, project_context
from recotem.front.views.plots import events_per_day_html
from recotem.ml.datafile import DataLimitExceeded, InteractionDataError
from recotem.projects import services, sources
from recotem.projects.limits import data_limits, limit_message
from recotem.projects.models import DataSource, ItemMetaData, Project, TrainingData

if TYPE_CHECKING:
    import pandas as pd

PREVIEW_ROWS = 20


@login_required
def data_page(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    return render(request, "front/data.html", _context(project))


def _context(project: Project, **extra: Any) -> dict[str, Any]:
    daily = events_per_day(project_id=project.pk)
    source = DataSource.objects.filter(project=project).first()
    return project_context(
        project,
        "data",
        events=daily,
        events_rows=[
            (day, [(t, counts[n]) for t, counts in daily.counts.items()])
            for n, day in reversed(list(enumerate(daily.days)))
            if any(counts[n] for counts in daily.counts.values())
        ],
        events_chart=events_per_day_html(daily.days, daily.counts),
        training_data=project.training_data.all()[:50],
        item_meta=project.item_meta_data.all()[:20],
        upload_form=extra.pop("upload_form", UploadForm(prefix="data")),
        meta_form=extra.pop("meta_form", UploadForm(prefix="meta")),
        source=source,
        source_form=extra.pop("source_form", None) or _source_form(source),
        **extra,
    )


def _source_form(source: DataSource | None) -> EventsSourceForm:
    """The events-source form, filled in from the project's events source if it has one."""
    if source is None or source.kind != DataSource.Kind.EVENTS:
        return EventsSourceForm(prefix="source")
    initial = {
        "event_types": ", ".join(source.event_types or []),
        "window_days": source.window_days,
    }
    return EventsSourceForm(prefix="source", initial=initial)


@login_required
@require_POST
def data_source_save(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    """Create the project's ``events`` data source, or change it (SQL and URL sources hold
    credentials and queries and stay in the API)."""
    project = get_project(request, pk)
    form = EventsSourceForm(request.POST, prefix="source")
    source = DataSource.objects.filter(project=project).first()
    if form.is_valid() and source is not None and source.kind != DataSource.Kind.EVENTS:
        form.add_error(
            None,
            f"This project already reads a {source.get_kind_display()} source; remove it first "
            "(or change it through the API).",
        )
    elif form.is_valid():
        values = {
            "event_types": form.cleaned_data["event_types"],
            "window_days": form.cleaned_data["window_days"],
        }
        try:
            if source is None:
                sources.source_create(project=project, kind=DataSource.Kind.EVENTS, **values)
            else:
                sources.source_update(source=source, **values)
        except ApplicationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, "Scheduled runs now train on the stored events.")
            return redirect("front:data", project.pk)
    return render(request, "front/data.html", _context(project, source_form=form), status=400)


@login_required
@require_POST
def data_source_delete(request: AuthenticatedHttpRequest, pk: int) -> HttpResponse:
    project = get_project(request, pk)
    source = get_object_or_404(DataSource, project=project)
    sources.source_delete(source=source)
    messages.success(request, "Data source removed: runs use the newest upload again.")
    return redirect("front:data", project.pk)


@login_required
@require_POST
def data_upload(request: AuthenticatedHttpRequest, pk: int, kind: str) -> HttpResponse:
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
        target = reverse("front:data", args=[project.pk]) + (
            f"?preview={created.pk}" if kind == "data" else ""
        )
        if is_xhr:
            response = render(
                request, "front/data_upload_result.html", {"form": form, "created": created}
            )
            response["X-Upload-Redirect"] = target
            return response
        return redirect(target)
    if is_xhr:
        return render(request, "front/data_upload_result.html", {"form": form}, status=400)
    extra = {"upload_form": form} if kind == "data" else {"meta_form": form}
    return render(request, "front/data.html", _context(project, **extra), status=400)


@login_required
def data_preview(
    request: AuthenticatedHttpRequest, pk: int, kind: str, obj_id: int
) -> HttpResponse:
    """The first rows of a stored file as a table fragment (loaded lazily by htmx)."""
    project = get_project(request, pk)
    if kind not in ("data", "meta"):
        raise Http404("Unknown data kind.")
    instance: TrainingData | ItemMetaData
    if kind == "data":
        instance = get_object_or_404(TrainingData, pk=obj_id, project=project)
    else:
        instance = get_object_or_404(ItemMetaData, pk=obj_id, project=project)
    columns: list[str] = []
    rows: list[list[Any]] = []
    error = ""
    import pandas as pd  # the data stack loads in the web process only when a preview is asked

    try:
        head = _head(instance, project)
        head = head.astype(object).where(pd.notna(head), None)
        columns = [str(c) for c in head.columns]
        rows = head.values.tolist()
    except DataLimitExceeded as exc:
        error = limit_message(exc)
    except (InteractionDataError, OSError, ValueError, NotImplementedError) as exc:
        error = str(exc)
    return render(
        request,
        "front/data_preview.html",
        {
            "instance": instance,
            "columns": columns,
            "rows": rows,
            "error": error,
            "project": project,
        },
    )


def _head(instance: TrainingData | ItemMetaData, project: Project) -> pd.DataFrame:
    """Only the first rows: a 100 MB upload (or a gzip bomb) must not slow the page down."""
    from recotem.ml.data import read_preview

    with local_file(instance.file) as path:
        return read_preview(
            path,
            PREVIEW_ROWS,
            string_columns=[project.user_column, project.item_column],
            original_name=instance.original_name,
            max_uncompressed_bytes=data_limits(path, instance.original_name)[
                "max_uncompressed_bytes"
            ],
        )
