"""HTTP for untrusted URLs (data sources, webhooks) that connects only to checked addresses.

Every request, and every redirect hop, goes through
:func:`recotem.lib.netguard.resolve_url_allowed`: the host is resolved once, each address is
checked against ``RECOTEM_ALLOWED_SOURCE_HOSTS``, and httpx connects to that IP literal. The
``Host`` header keeps the original name, and for https the TLS SNI and certificate check use
it too (httpcore's ``sni_hostname`` request extension), so virtual hosts and certificates work
while a DNS server that answers differently on a second look-up (rebinding to 127.0.0.1 or
169.254.169.254) is never asked a second time.

Other rules: no proxies or ``.netrc`` from the environment (``trust_env=False``), no
connection reuse, redirects followed by hand (at most ``max_redirects``, each re-checked),
``Accept-Encoding: identity`` (a response compressed anyway is refused: it could inflate a
thousandfold per read before the cap is checked), a byte cap counted while streaming, connect/read timeouts and a
total deadline. Errors are :class:`FetchError` subclasses whose message says in words what
failed; none ever contains bytes the server sent (no body, no reason phrase, no protocol
garbage).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx

from recotem.lib.netguard import UrlNotAllowed, resolve_url_allowed

__all__ = [
    "Download",
    "FetchError",
    "FetchHttpStatus",
    "FetchRefused",
    "FetchTimeout",
    "FetchTooLarge",
    "PostAttempt",
    "PostOutcome",
    "RetryPolicy",
    "Timeouts",
    "download_to_file",
    "post_json",
    "post_json_with_retries",
]

_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})
_USER_AGENT: Final = "Recotem/1"
Forbidden = Iterable[tuple[str, int | None]]
Verify = Any  # ssl.SSLContext | bool | str, as httpx takes it


class FetchError(Exception):
    """A request failed; ``str()`` is safe to show. ``retryable``: may work later."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class FetchRefused(FetchError):
    """The URL (or a redirect target) is not allowed by the SSRF policy."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class FetchTooLarge(FetchError):
    """The response body is larger than ``limit`` bytes; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"The response is larger than {limit / 2**20:g} MB, the download limit.",
            retryable=False,
        )
        self.limit = limit


class FetchTimeout(FetchError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class FetchHttpStatus(FetchError):
    """The server answered with a status that is not success (``status``)."""

    def __init__(self, status: int, host: str) -> None:
        super().__init__(
            f"The server at {host} answered HTTP {status}.",
            retryable=status >= 500 or status in (408, 429),
        )
        self.status = status


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, between two reads, and for the whole call (all hops/attempts)."""

    connect: float = 10.0
    read: float = 30.0
    total: float = 300.0


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    final_url: str
    content_type: str | None


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with capped exponential backoff: ``backoff * 2**(n-1)``, at most
    ``max_backoff`` (a server's ``Retry-After`` in seconds is honoured up to that cap).

    Retried: connection errors, timeouts, 5xx, 408 and 429. Not retried: other statuses
    (4xx, an unfollowed 3xx), URLs the policy refuses. The default, 3 attempts with 1 s and
    2 s between them, is what ``webhook_deliver`` did.
    """

    attempts: int = 3
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.backoff_seconds * 2.0 ** (attempt - 1), self.max_backoff_seconds)
        if retry_after is not None:
            return min(max(retry_after, base), self.max_backoff_seconds)
        return base


@dataclass
class PostAttempt:
    attempt: int
    at: str
    status: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """``{"attempt", "at", "status"}`` or ``{"attempt", "at", "error"}`` (the run log shape)."""
        out: dict[str, Any] = {"attempt": self.attempt, "at": self.at}
        if self.status is not None:
            out["status"] = self.status
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class PostOutcome:
    delivered: bool
    attempts: list[PostAttempt] = field(default_factory=list)


def _client(verify: Verify) -> httpx.Client:
    transport = httpx.HTTPTransport(verify=verify, retries=0, trust_env=False)
    return httpx.Client(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
    )


def _remaining(deadline: float, host: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise FetchTimeout(f"The request to {host} took longer than the time allowed.")
    return left


def _describe(exc: httpx.HTTPError, host: str, timeouts: Timeouts) -> FetchError:
    """httpx errors in words; protocol errors may quote server bytes, so they are not shown."""
    if isinstance(exc, httpx.ConnectTimeout):
        return FetchTimeout(f"Connecting to {host} timed out after {timeouts.connect:g} s.")
    if isinstance(exc, httpx.ReadTimeout):
        return FetchTimeout(f"The server at {host} sent nothing for {timeouts.read:g} s.")
    if isinstance(exc, httpx.TimeoutException):
        return FetchTimeout(f"The request to {host} timed out.")
    if isinstance(exc, httpx.ConnectError):
        # Local OS / OpenSSL wording (refused, unreachable, certificate verify failed).
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "no reason given"
        return FetchError(f"Could not connect to {host}: {reason}.", retryable=True)
    if isinstance(exc, httpx.RemoteProtocolError | httpx.DecodingError):
        return FetchError(f"The server at {host} sent an invalid HTTP response.", retryable=True)
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.CloseError):
        return FetchError(f"The connection to {host} broke off.", retryable=True)
    return FetchError(f"The request to {host} failed ({type(exc).__name__}).", retryable=True)


@contextmanager
def _pinned(
    client: httpx.Client,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    content: bytes | None,
    allowed_hosts: Iterable[str],
    forbidden_hosts: Forbidden,
    timeouts: Timeouts,
    deadline: float,
) -> Iterator[httpx.Response]:
    """One request to the checked addresses of ``url`` (tried in order), response streamed."""
    try:
        checked = resolve_url_allowed(
            url, allowed_hosts=allowed_hosts, forbidden_hosts=forbidden_hosts
        )
    except UrlNotAllowed as exc:
        raise FetchRefused(str(exc)) from None
    original = httpx.URL(checked.url)
    host = checked.host
    failure: FetchError | None = None
    for address in checked.addresses:
        left = _remaining(deadline, host)
        timeout = httpx.Timeout(
            connect=min(timeouts.connect, left),
            read=min(timeouts.read, left),
            write=min(timeouts.read, left),
            pool=min(timeouts.connect, left),
        )
        extensions: dict[str, Any] = {"timeout": timeout.as_dict()}
        if checked.scheme == "https" and original.host != str(address):
            extensions["sni_hostname"] = original.host  # IDNA-encoded name for SNI + cert
        request = client.build_request(
            method,
            original.copy_with(host=str(address)),
            headers={
                "Host": original.netloc.decode("ascii"),
                "User-Agent": _USER_AGENT,
                "Accept-Encoding": "identity",
                **headers,
            },
            content=content,
            extensions=extensions,
        )
        try:
            response = client.send(request, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            failure = _describe(exc, host, timeouts)
            continue  # the next checked address, if any
        except httpx.HTTPError as exc:
            raise _describe(exc, host, timeouts) from None
        try:
            yield response
        except httpx.HTTPError as exc:
            raise _describe(exc, host, timeouts) from None
        finally:
            response.close()
        return
    assert failure is not None
    raise failure


def download_to_file(
    url: str,
    dest: str | Path,
    *,
    allowed_hosts: Iterable[str],
    max_bytes: int,
    forbidden_hosts: Forbidden = (),
    timeouts: Timeouts = Timeouts(),
    max_redirects: int = 5,
    verify: Verify = True,
) -> Download:
    """GET ``url`` into the file ``dest``, following at most ``max_redirects`` checked redirects.

    Stops with :class:`FetchTooLarge` as soon as more than ``max_bytes`` arrived (or when
    ``Content-Length`` already says so), :class:`FetchTimeout` once ``timeouts.total`` has
    passed, :class:`FetchRefused` for a URL or redirect the policy refuses,
    :class:`FetchHttpStatus` for a non-2xx answer, :class:`FetchError` otherwise. On any
    error ``dest`` is removed.
    """
    dest = Path(dest)
    deadline = time.monotonic() + timeouts.total
    current = url.strip()
    try:
        with _client(verify) as client:
            for hop in range(max_redirects + 1):
                with _pinned(
                    client,
                    "GET",
                    current,
                    headers={},
                    content=None,
                    allowed_hosts=allowed_hosts,
                    forbidden_hosts=forbidden_hosts,
                    timeouts=timeouts,
                    deadline=deadline,
                ) as response:
                    host = httpx.URL(current).host
                    location = response.headers.get("location")
                    if response.status_code in _REDIRECTS and location:
                        if hop == max_redirects:
                            raise FetchError(
                                f"More than {max_redirects} redirects, starting at {httpx.URL(url).host}.",
                                retryable=False,
                            )
                        current = str(httpx.URL(current).join(location))
                        continue
                    if not 200 <= response.status_code < 300:
                        raise FetchHttpStatus(response.status_code, host)
                    size = _save(response, dest, max_bytes=max_bytes, deadline=deadline, host=host)
                    return Download(
                        path=dest,
                        size=size,
                        final_url=current,
                        content_type=response.headers.get("content-type"),
                    )
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def _save(
    response: httpx.Response, dest: Path, *, max_bytes: int, deadline: float, host: str
) -> int:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchTooLarge(max_bytes)
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # Recotem asked for identity. Inflating it here would let a small body expand a
        # thousandfold per network read before the cap is checked; serve the file as .gz.
        raise FetchError(
            f"The server at {host} compressed the response ({encoding[:20]}) although Recotem "
            "asked for it uncompressed; serve the file as it is (e.g. data.csv.gz).",
            retryable=False,
        )
    size = 0
    with open(dest, "wb") as fh:
        for chunk in response.iter_raw():  # as received: no waiting to fill a chunk
            size += len(chunk)
            if size > max_bytes:
                raise FetchTooLarge(max_bytes)
            _remaining(deadline, host)
            fh.write(chunk)
        fh.flush()
        os.fsync(fh.fileno())
    return size


def _post_once(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    allowed_hosts: Iterable[str],
    forbidden_hosts: Forbidden,
    timeouts: Timeouts,
    verify: Verify,
) -> tuple[int, float | None]:
    deadline = time.monotonic() + timeouts.total
    with (
        _client(verify) as client,
        _pinned(
            client,
            "POST",
            url,
            headers={"Content-Type": "application/json", **headers},
            content=body,
            allowed_hosts=allowed_hosts,
            forbidden_hosts=forbidden_hosts,
            timeouts=timeouts,
            deadline=deadline,
        ) as response,
    ):
        retry_after = response.headers.get("retry-after", "").strip()
        return response.status_code, float(retry_after) if retry_after.isdigit() else None


def post_json(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str],
    allowed_hosts: Iterable[str],
    forbidden_hosts: Forbidden = (),
    timeouts: Timeouts = Timeouts(connect=5.0, read=10.0, total=15.0),
    verify: Verify = True,
) -> int:
    """POST the JSON ``body`` once and return the HTTP status (the response body is not read).

    Redirects are not followed (a 3xx is returned as it is). Raises :class:`FetchRefused`,
    :class:`FetchTimeout` or :class:`FetchError` when there is no status to return.
    """
    status, _ = _post_once(
        url,
        body,
        headers=headers,
        allowed_hosts=allowed_hosts,
        forbidden_hosts=forbidden_hosts,
        timeouts=timeouts,
        verify=verify,
    )
    return status


def post_json_with_retries(
    url: str,
    body: bytes,
    *,
    headers: Mapping[str, str] | Callable[[], Mapping[str, str]],
    allowed_hosts: Iterable[str],
    forbidden_hosts: Forbidden = (),
    timeouts: Timeouts = Timeouts(connect=5.0, read=10.0, total=15.0),
    retry: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    verify: Verify = True,
) -> PostOutcome:
    """POST with :class:`RetryPolicy`; the URL is re-checked (and re-resolved) every attempt.

    ``headers`` may be a function called before each attempt (a signature with a fresh
    timestamp). Returns whether a 2xx arrived and one :class:`PostAttempt` per attempt.
    """
    outcome = PostOutcome(delivered=False)
    allowed = list(allowed_hosts)
    forbidden = list(forbidden_hosts)
    for attempt in range(1, max(1, retry.attempts) + 1):
        record = PostAttempt(attempt=attempt, at=datetime.now(UTC).isoformat())
        outcome.attempts.append(record)
        retry_after: float | None = None
        try:
            record.status, retry_after = _post_once(
                url,
                body,
                headers=headers() if callable(headers) else headers,
                allowed_hosts=allowed,
                forbidden_hosts=forbidden,
                timeouts=timeouts,
                verify=verify,
            )
        except FetchError as exc:
            record.error = str(exc)
            if not exc.retryable:
                return outcome
        if record.status is not None:
            if 200 <= record.status < 300:
                outcome.delivered = True
                return outcome
            if not (record.status >= 500 or record.status in (408, 429)):
                return outcome  # the receiver refuses it (or redirects); repeating will not help
        if attempt < retry.attempts:
            sleep(retry.delay(attempt, retry_after))
    return outcome
