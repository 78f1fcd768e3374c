"""An HTTP client for one registry: HTTPS or allowed plain HTTP, auth challenges, retries, clear errors.

Plain HTTP: a registry on a loopback host (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`) may answer
in plain HTTP, as Docker allows for loopback registries; any other host needs `--insecure`, which also
accepts TLS certificates that do not verify. The client tries HTTPS first and falls back to plain HTTP
only where that is allowed; elsewhere a registry that does not speak TLS is one clear error.

Retries: a registry that never answered is reported at once (it is down, or the name is wrong); once it
has answered, connection failures, timeouts and 429/5xx answers are retried with exponential backoff.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import random
import ssl
import time
from collections.abc import Iterator
from urllib.parse import urljoin, urlsplit

import httpx

from ollama_img.errors import NotFound, UserError
from ollama_img.transfer.registry.auth import (
    Authenticator,
    AuthError,
    Credentials,
    find_credentials,
    parse_challenge,
)

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
ATTEMPTS = 5  # tries of one request, or of one blob without progress
BACKOFF_BASE = 0.25  # seconds before the first retry; doubled each time, with jitter
BACKOFF_MAX = 8.0
MAX_RETRY_AFTER = 30.0
MAX_ERROR_BODY = 64 * 1024
TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class RegistryError(UserError):
    """A registry answered with an error (the message carries its OCI error codes)."""


def is_loopback(host: str) -> bool:
    """Whether `host` (optionally `:port`) names this machine: localhost, 127.0.0.0/8 or ::1."""
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def plain_http_allowed(host: str, insecure: bool) -> bool:
    return insecure or is_loopback(host)


def backoff(attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...)."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * random.uniform(0.75, 1.25)


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying once the registry has answered before: the network, not the request."""
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol)


class RegistryClient:
    """Requests to one registry host, authenticated for the scopes each request names."""

    def __init__(
        self,
        host: str,
        *,
        insecure: bool = False,
        credentials: Credentials | None = None,
        attempts: int = ATTEMPTS,
    ):
        self.host = host
        self.insecure = insecure
        self.attempts = attempts
        self._http = httpx.Client(timeout=TIMEOUT, verify=not insecure, follow_redirects=False)
        lookup = (lambda _host: credentials) if credentials is not None else find_credentials
        self.auth = Authenticator(host, self._http, self._may_send_credentials, lookup)
        self._base: str | None = None
        self.answered = False  # whether the registry has answered once (then failures are retried)

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- where the registry is ---------------------------------------------------------------------

    @property
    def base(self) -> str:
        """`https://host` or `http://host`, found by asking `/v2/` once."""
        if self._base is None:
            self._base = self._probe()
        return self._base

    def _probe(self) -> str:
        try:
            response = self._http.get(f"https://{self.host}/v2/")
        except httpx.ConnectError as exc:
            if _is_tls_failure(exc) or plain_http_allowed(self.host, self.insecure):
                return self._probe_plain(exc)
            raise self._unreachable(exc) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        self._check_v2(response, "https")
        return f"https://{self.host}"

    def _probe_plain(self, tls_failure: Exception) -> str:
        if not plain_http_allowed(self.host, self.insecure):
            raise UserError(
                f"registry {self.host} does not answer over HTTPS ({describe_failure(tls_failure)}); "
                "if it is a plain-HTTP registry you trust, add --insecure"
            )
        try:
            response = self._http.get(f"http://{self.host}/v2/")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        self._check_v2(response, "http")
        return f"http://{self.host}"

    def _check_v2(self, response: httpx.Response, scheme: str) -> None:
        self.answered = True
        if response.status_code == 404:
            raise UserError(f"{scheme}://{self.host} is not an OCI registry (it has no /v2/ API)")
        if response.status_code >= 500:
            raise RegistryError(f"registry {self.host} is failing (HTTP {response.status_code})")

    def _unreachable(self, exc: Exception) -> UserError:
        return UserError(f"cannot reach registry {self.host}: {describe_failure(exc)}")

    def url(self, path_or_url: str) -> str:
        """An absolute URL for an API path or for a Location the registry sent (relative or absolute)."""
        return urljoin(self.base + "/", path_or_url)

    def _may_send_credentials(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme == "https":
            return True
        return parts.scheme == "http" and plain_http_allowed(parts.netloc, self.insecure)

    # -- requests ----------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path_or_url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict | None = None,
        content=None,
        stream: bool = False,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """One request, answering auth challenges. `content` is bytes, or a function that makes the body
        (called again when a 401 makes the request go again).

        With `stream`, the caller must close the response. Transport errors propagate as httpx errors.
        """
        url = self.url(path_or_url)
        same_host = urlsplit(url).netloc == self.host
        authorization = self.auth.header(scopes) if same_host else None
        for round_ in range(3):
            request_headers = dict(headers or {})
            if authorization:
                request_headers["Authorization"] = authorization
            body = content() if callable(content) else content
            request = self._http.build_request(method, url, headers=request_headers, content=body)
            response = self._http.send(request, stream=stream, follow_redirects=follow_redirects)
            self.answered = True
            if response.status_code != 401 or response.url.netloc.decode() != self.host:
                return response  # a 401 from where a redirect led is not this registry's to answer
            challenge = response.headers.get("www-authenticate")
            response.close()
            if round_ == 2:
                raise self._refused(challenge)
            authorization = self.auth.answer(challenge, scopes, url, refused=authorization is not None)
        raise AssertionError("unreachable")  # pragma: no cover

    def _refused(self, challenge: str | None) -> AuthError:
        parsed = parse_challenge(challenge)
        detail = f" ({parsed.params['error']})" if parsed and parsed.params.get("error") else ""
        credentials = self.auth.credentials
        if credentials is None:
            return self.auth.needs_credentials()
        return AuthError(f"registry {self.host} refused {credentials.describe()}{detail}")

    def request(
        self,
        method: str,
        path_or_url: str,
        scopes: tuple[str, ...],
        *,
        headers: dict | None = None,
        content: bytes | None = None,
        what: str,
        limit: int = MAX_ERROR_BODY,
        follow_redirects: bool = False,
    ) -> httpx.Response:
        """`send`, retried with backoff on transient failures. The answer's body is read, at most `limit`
        bytes of it (a registry cannot make us hold more)."""
        for attempt in range(1, self.attempts + 1):
            try:
                response = self.send(
                    method,
                    path_or_url,
                    scopes,
                    headers=headers,
                    content=content,
                    stream=True,
                    follow_redirects=follow_redirects,
                )
                response = read_bounded(response, limit, f"{what}: registry {self.host}")
            except httpx.HTTPError as exc:
                if not (self.answered and is_transient(exc)) or attempt == self.attempts:
                    raise self.transport_error(exc, what) from None
                time.sleep(backoff(attempt))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.attempts:
                time.sleep(retry_delay(response, attempt))
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.contextmanager
    def stream(
        self, method: str, path_or_url: str, scopes: tuple[str, ...], **kwargs
    ) -> Iterator[httpx.Response]:
        response = self.send(method, path_or_url, scopes, stream=True, **kwargs)
        try:
            yield response
        finally:
            response.close()

    def transport_error(self, exc: Exception, what: str) -> UserError:
        if not self.answered:
            return self._unreachable(exc)
        return UserError(f"{what} from registry {self.host} failed: {describe_failure(exc)}")

    def error(self, response: httpx.Response, what: str) -> UserError:
        """A clear error for an unexpected answer: the registry's own OCI error codes and messages."""
        codes = oci_errors(response)
        detail = "; ".join(f"{code}: {message}" if message else code for code, message in codes)
        detail = detail or f"HTTP {response.status_code}"
        if response.status_code == 404:
            return NotFound(f"{what}: not found on registry {self.host} ({detail})")
        if response.status_code == 403:
            return AuthError(f"{what}: registry {self.host} denied access ({detail})")
        return RegistryError(f"{what}: registry {self.host} answered {detail}")


def retry_delay(response: httpx.Response, attempt: int) -> float:
    """Honour a (bounded) Retry-After; otherwise the usual backoff."""
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(response.headers.get("retry-after", ""))))
    except ValueError:
        return backoff(attempt)


def read_bounded(response: httpx.Response, limit: int, who: str) -> httpx.Response:
    """The streamed `response` with its body read into memory, refusing one longer than `limit` bytes."""
    try:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > limit:
                raise RegistryError(f"{who} sent an answer larger than {limit} bytes")
    finally:
        response.close()
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(
        response.status_code, headers=headers, content=bytes(body), request=response.request
    )


def oci_errors(response: httpx.Response) -> list[tuple[str, str]]:
    """(code, message) pairs of an OCI error body (read already), or [] when it has none."""
    try:
        errors = json.loads(response.content[:MAX_ERROR_BODY]).get("errors") or []
        return [(str(e.get("code", "")), str(e.get("message", ""))) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, httpx.HTTPError):
        return []


def _is_tls_failure(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_failure(exc: BaseException) -> str:
    """A short reason for a network failure ("connection refused", "certificate verify failed", ...)."""
    text = str(exc) or exc.__class__.__name__
    for marker, short in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("Temporary failure in name resolution", "unknown host"),
        ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate does not verify (use --insecure to accept it)"),
        ("WRONG_VERSION_NUMBER", "it does not speak TLS"),
        ("timed out", "timed out"),
    ):
        if marker in text:
            return short
    return text.splitlines()[0][:200]
