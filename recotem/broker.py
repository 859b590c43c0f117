"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every 0.25 s.

kombu polls virtual transports once a second, and a worker fetches only `prefetch × concurrency`
messages per poll, so ten schedules firing at 02:00 used to start up to five seconds late. The
interval cannot be set through transport options (this transport hands those to SQLAlchemy's
create_engine), hence a subclass registered under its own URL scheme, `recotemsqla+sqlite://`.
At 0.25 s an idle worker spends about 1-2 % of one core polling (measured 3 % at 0.1 s).
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

SCHEME = "recotemsqla"


class EmbeddedTransport(SQLAlchemyTransport):
    polling_interval = 0.25


def register() -> None:
    TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:EmbeddedTransport")
