"""The Data page's Events panel: stored events per day and type, with a plot."""

from __future__ import annotations

import re
from datetime import timedelta

from django.test import Client

from recotem.core.jobs import db_now
from recotem.experiments.models import Event
from recotem.experiments.reports import events_per_day
from recotem.projects.models import Project


def _store(project: Project, event_type: str, days_ago: int, n: int) -> None:
    at = db_now() - timedelta(days=days_ago)
    Event.objects.bulk_create(
        Event(project=project, event_type=event_type, user_id=f"u{k}", item_id="i", timestamp=at)
        for k in range(n)
    )


def test_it_counts_events_per_day_and_type(project: Project) -> None:
    _store(project, "click", 0, 3)
    _store(project, "impression", 0, 5)
    _store(project, "click", 2, 1)
    _store(project, "click", 40, 7)  # outside the 30-day window, but in the total
    daily = events_per_day(project_id=project.pk)
    assert len(daily.days) == 30 and daily.days[-1] == db_now().date()
    assert daily.counts["click"][-1] == 3 and daily.counts["click"][-3] == 1
    assert daily.counts["impression"][-1] == 5 and sum(daily.counts["click"]) == 4
    assert daily.total == 16


def test_the_data_page_shows_the_events_table_and_plot(web: Client, project: Project) -> None:
    empty = web.get(f"/projects/{project.pk}/data/").content.decode()
    assert "No events in the last 30 days" in empty and "events-chart" not in empty
    _store(project, "click", 0, 3)
    _store(project, "purchase", 1, 2)
    page = web.get(f"/projects/{project.pk}/data/").content.decode()
    table = page[page.index('id="events-table"') :]
    table = table[: table.index("</table>")]
    rows = re.findall(r"<tr><td>([\d-]+)</td>(.*?)</tr>", table)
    assert [day for day, _ in rows] == [
        f"{db_now().date():%Y-%m-%d}",
        f"{db_now().date() - timedelta(days=1):%Y-%m-%d}",
    ]
    assert re.findall(r">(\d+)</td>", rows[0][1]) == ["3", "0"]  # click, purchase
    assert 'id="events-chart"' in page and "(5 stored)" in page
