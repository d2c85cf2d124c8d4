"""Which manifest digest a registry serves for an image reference, asked the way each engine asks.

The digest is what a container run is keyed on when the image is named by tag
(``ghcr.io/org/model:1.2``): the digest of the manifest, or of the image index for
a multi-arch image, exactly as the registry serves it, which is the digest
``docker pull`` prints and registry web pages show.

Who asks the registry (see docs/containers.md for why):

- **docker**: the Docker daemon (``GET /distribution/<ref>/json``, what
  ``docker buildx imagetools``/``docker manifest`` use), so the daemon's
  credentials (``config.json``, credential helpers), mirrors, proxies and
  insecure-registry settings apply as for ``docker pull``.
- **podman**, **apptainer**: ``skopeo inspect --raw`` when skopeo is installed.
  skopeo is built on containers/image, the library Podman and Apptainer use for
  ``docker://`` references, so credentials (``auth.json``, ``REGISTRY_AUTH_FILE``,
  Docker's ``config.json`` and its credential helpers), ``registries.conf``
  mirrors, certificates and insecure registries behave as in the engine. For
  Apptainer its own credentials come first (``APPTAINER_DOCKER_USERNAME`` and
  ``_PASSWORD``, what ``apptainer registry login`` wrote), handed
  to skopeo in a memory-only file, never on its command line.
- Without skopeo (common on clusters), a small built-in client speaks the
  registry protocol itself: ``HEAD`` on the manifest (``GET`` when the registry
  sends no ``Docker-Content-Digest``; the digest is then the SHA-256 of the
  bytes), the bearer-token flow (challenge → token → retry) anonymously or with
  the credentials found in the same files, in the same order, basic
  authentication, and ``registries.conf`` mirrors.

``CONSIST_REGISTRY_CLIENT`` (``auto``, ``daemon``, ``skopeo``, ``http``) forces one.

Each answer is kept for ``CONSIST_REGISTRY_TTL`` seconds (default 300) per
process, so a sweep of a thousand steps asks once; a pinned ``@sha256:``
reference never asks. Every fresh answer is also recorded on disk
(``CONSIST_CACHE_DIR``, default ``~/.cache/consist``, file ``image-digests.json``)
so that a node that cannot reach the registry can still key a run on the digest
the image had when it was fetched.

No credential is ever logged, put in an error message, a record or an argument list.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ImageNotFoundError

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
INDEX_TYPES = MANIFEST_TYPES[:2]
DEFAULT_TTL_S = 300.0
TIMEOUT_S = 20.0
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


# --------------------------------------------------------------------- errors


class RegistryError(ImageNotFoundError):
    """The registry did not tell the digest of an image reference."""

    kind = "error"


class RegistryUnreachableError(RegistryError):
    """No connection to the registry (offline node, DNS, firewall, timeout)."""

    kind = "unreachable"


class RegistryAuthError(RegistryError):
    """The registry wants credentials, or refused the ones it was given."""

    kind = "unauthorized"


class RegistryNotFoundError(RegistryError):
    """The registry has no such repository or tag."""

    kind = "not-found"


class RegistryRateLimitError(RegistryError):
    """The registry refused with 429 Too Many Requests."""

    kind = "rate-limited"


def _fail(kind: type[RegistryError], ref: str, detail: str, *, creds: Credential | None = None) -> RegistryError:
    where = f"credentials from {creds.source}" if creds else "no credentials (anonymous)"
    if kind is RegistryUnreachableError:
        cause = "the registry cannot be reached from this machine (offline node, proxy, firewall or DNS)"
        fix = (
            f"pin the image by digest ({ref.split('@')[0]}@sha256:...), or run once where the registry "
            "can be reached so the digest is recorded, or build a .sif file and pass its path"
        )
    elif kind is RegistryAuthError:
        cause = f"the registry needs a login, or refused the login it got ({where})"
        fix = (
            "log in the way the engine does (`docker login`, `podman login`, `apptainer registry login`, or "
            "APPTAINER_DOCKER_USERNAME/APPTAINER_DOCKER_PASSWORD), or pin the image by digest"
        )
    elif kind is RegistryNotFoundError:
        cause = "the repository or tag does not exist there, or is private and needs a login"
        fix = "check the name and tag, log in if it is private, or pin the image by digest"
    elif kind is RegistryRateLimitError:
        cause = "the registry's pull rate limit was reached (Docker Hub limits anonymous clients per address)"
        fix = "log in to get a higher limit, or pin the image by digest (a pinned reference never asks the registry)"
    else:
        cause = "the registry answered with an error"
        fix = "check the reference; pin the image by digest to avoid asking the registry"
    err = kind(f"Cannot resolve {ref} to a digest at its registry: {detail.strip()[:300]}", cause, fix)
    err.detail = detail.strip()[:300]  # type: ignore[attr-defined]
    return err


# --------------------------------------------------------------------- references


def split_reference(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference, as written (no registry defaults)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    tag = None
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image, tag = image.rsplit(":", 1)
    return image, tag, digest


@dataclasses.dataclass(frozen=True)
class Reference:
    """A normalised image reference: ``registry/repository:tag`` or ``…@digest``."""

    registry: str  # "docker.io" for Docker Hub
    repository: str  # "library/busybox" on Docker Hub
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, image: str) -> Reference:
        ref, tag, digest = split_reference(image.removeprefix("docker://"))
        first, _, rest = ref.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            registry, repo = first, rest
        else:
            registry, repo = DOCKER_HUB, ref
        if registry in _HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in repo:
            repo = f"library/{repo}"
        if not repo or repo != repo.lower() or any(c.isspace() for c in image):
            raise ImageNotFoundError(f"{image!r} is not an image reference", None, "use host/repository:tag")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, repo, tag, digest)

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def with_registry(self, registry: str, repository: str | None = None) -> Reference:
        return dataclasses.replace(self, registry=registry, repository=repository or self.repository)


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What a registry said about a reference."""

    reference: str  # normalised, as asked
    digest: str  # sha256:… of the manifest or image index
    media_type: str | None
    client: str  # "daemon", "skopeo", "http", "pinned"
    resolved_at: float

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


# --------------------------------------------------------------------- credentials


@dataclasses.dataclass(frozen=True)
class Credential:
    """A login for one registry. ``source`` says where it was found; the secret is never shown."""

    username: str
    secret: str = dataclasses.field(repr=False)
    source: str
    identity_token: bool = False  # the secret is an OAuth2 refresh token ("<token>" user in helpers)

    def __repr__(self) -> str:
        return f"Credential(username={self.username!r}, source={self.source!r})"


def _home() -> Path:
    return Path(os.environ.get("HOME") or Path.home())


def auth_files(engine: str) -> list[tuple[Path, str]]:
    """The credential files an engine reads for ``docker://`` references, first match wins.

    containers/image (Podman, skopeo, and Apptainer, which puts its own file first):
    ``REGISTRY_AUTH_FILE`` or ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``$XDG_CONFIG_HOME/containers/auth.json``, then Docker's ``config.json``.
    Docker: ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``.
    """
    home = _home()
    docker_cfg = Path(os.environ["DOCKER_CONFIG"]) / "config.json" if os.environ.get("DOCKER_CONFIG") else None
    docker_cfg = docker_cfg or home / ".docker" / "config.json"
    if engine == "docker":
        return [(docker_cfg, "Docker's config.json")]
    files: list[tuple[Path, str]] = []
    if engine == "apptainer":
        # `apptainer registry login` (1.4) writes <config dir>/docker-config.json when that file
        # exists (older releases created it), else $APPTAINER_CONFIGDIR/config.json, else
        # ~/.docker/config.json, whatever DOCKER_CONFIG says.
        configdir = os.environ.get("APPTAINER_CONFIGDIR") or os.environ.get("SINGULARITY_CONFIGDIR")
        base = Path(configdir) if configdir else home / ".apptainer"
        files.append((base / "docker-config.json", "Apptainer's registry login"))
        if configdir:
            files.append((base / "config.json", "Apptainer's registry login"))
        files.append((home / ".docker" / "config.json", "Apptainer's registry login"))
    if engine != "apptainer" and os.environ.get("REGISTRY_AUTH_FILE"):
        files.append((Path(os.environ["REGISTRY_AUTH_FILE"]), "REGISTRY_AUTH_FILE"))
    elif engine != "apptainer" and os.environ.get("XDG_RUNTIME_DIR"):
        files.append((Path(os.environ["XDG_RUNTIME_DIR"]) / "containers" / "auth.json", "containers auth.json"))
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    files.append((xdg / "containers" / "auth.json", "containers auth.json"))
    files.append((docker_cfg, "Docker's config.json"))
    return files


def _keys_for(ref: Reference) -> list[str]:
    """auths keys that may hold a login for ``ref``: most specific repository path first."""
    parts = ref.repository.split("/")
    keys = [f"{ref.registry}/{'/'.join(parts[:i])}" for i in range(len(parts), 0, -1)]
    keys.append(ref.registry)
    if ref.registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "registry-1.docker.io"]
    return keys


def _normalise_key(key: str) -> str:
    key = re.sub(r"^https?://", "", key).rstrip("/")
    key = key.removesuffix("/v1").removesuffix("/v2")
    return "docker.io" if key in _HUB_ALIASES else key


def _helper(name: str, server: str, source: str) -> Credential | None:
    """Ask ``docker-credential-<name> get`` (Docker's credential-helper protocol)."""
    exe = shutil.which(f"docker-credential-{name}")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "get"], input=server, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None  # "credentials not found in native keychain"
    try:
        data = json.loads(proc.stdout)
        user, secret = data["Username"], data["Secret"]
    except (ValueError, KeyError, TypeError):
        return None
    if not secret:
        return None
    return Credential(user, secret, f"{source} (credential helper {name!r})", identity_token=user == "<token>")


def _from_file(path: Path, label: str, ref: Reference) -> Credential | None:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    source = f"{label} ({path})"
    wanted = _keys_for(ref)
    helpers = {_normalise_key(k): v for k, v in (cfg.get("credHelpers") or {}).items()}
    for key in wanted:
        if _normalise_key(key) in helpers:
            server = "https://index.docker.io/v1/" if ref.registry == DOCKER_HUB else ref.registry
            return _helper(str(helpers[_normalise_key(key)]), server, source)
    auths = {_normalise_key(k): v for k, v in (cfg.get("auths") or {}).items() if isinstance(v, dict)}
    for key in wanted:
        entry = auths.get(_normalise_key(key))
        if entry is None:
            continue
        if entry.get("identitytoken"):
            user = entry.get("username") or "<token>"
            return Credential(user, str(entry["identitytoken"]), source, identity_token=True)
        if entry.get("auth"):
            try:
                user, _, secret = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                continue
            if user or secret:
                return Credential(user, secret, source)
        if entry.get("username") and entry.get("password"):
            return Credential(str(entry["username"]), str(entry["password"]), source)
    if cfg.get("credsStore"):
        server = "https://index.docker.io/v1/" if ref.registry == DOCKER_HUB else ref.registry
        return _helper(str(cfg["credsStore"]), server, source)
    return None


def find_credentials(image: str | Reference, engine: str) -> Credential | None:
    """The login the engine would use for ``image``'s registry, or None (anonymous)."""
    ref = image if isinstance(image, Reference) else Reference.parse(image)
    if engine == "apptainer":
        for prefix in ("APPTAINER", "SINGULARITY"):
            user = os.environ.get(f"{prefix}_DOCKER_USERNAME")
            secret = os.environ.get(f"{prefix}_DOCKER_PASSWORD")
            if user and secret:
                return Credential(user, secret, f"{prefix}_DOCKER_USERNAME/{prefix}_DOCKER_PASSWORD")
    for path, label in auth_files(engine):
        found = _from_file(path, label, ref)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------- registries.conf (mirrors, insecure)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where to ask: a registry host and repository (a mirror may rename), and whether plain HTTP is allowed."""

    host: str
    repository: str
    insecure: bool
    mirror: bool = False


def _registries_conf_files() -> list[Path]:
    """registries.conf as containers/image reads it: one main file, then the drop-in directories."""
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")
    user = xdg / "containers" / "registries.conf"
    if os.environ.get("CONTAINERS_REGISTRIES_CONF"):
        files = [Path(os.environ["CONTAINERS_REGISTRIES_CONF"])]
    else:
        files = [user if user.exists() else Path("/etc/containers/registries.conf")]
    for d in (Path("/etc/containers/registries.conf.d"), xdg / "containers" / "registries.conf.d"):
        try:
            files += sorted(p for p in d.iterdir() if p.suffix == ".conf")
        except OSError:
            pass
    return files


def _registry_table() -> tuple[dict[str, dict[str, Any]], set[str]]:
    """prefix → [[registry]] table (later files override earlier ones), and V1 insecure hosts."""
    import tomllib

    table: dict[str, dict[str, Any]] = {}
    insecure_v1: set[str] = set()
    for path in _registries_conf_files():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for entry in data.get("registry") or []:
            if isinstance(entry, dict) and (entry.get("prefix") or entry.get("location")):
                table[str(entry.get("prefix") or entry.get("location"))] = entry
        insecure_v1.update((data.get("registries") or {}).get("insecure", {}).get("registries") or [])
    return table, insecure_v1


def _prefix_matches(prefix: str, name: str) -> bool:
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return host.endswith(prefix[1:])
    return name == prefix or name.startswith(prefix + "/")


def _loopback(host: str) -> bool:
    h = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return h in ("localhost", "[::1]") or h.startswith("127.")


def endpoints(ref: Reference, engine: str) -> list[Endpoint]:
    """Mirrors first, then the registry itself (``location`` may rewrite it), as containers/image orders them.

    A tag lookup skips mirrors marked ``pull-from-mirror = "digest-only"``. Docker's
    daemon applies its own ``registry-mirrors``; this is only for the built-in client.
    """
    host = DOCKER_HUB_API if ref.registry == DOCKER_HUB else ref.registry
    primary = Endpoint(host, ref.repository, insecure=_loopback(host))
    if engine == "docker":
        return [primary]
    table, insecure_v1 = _registry_table()
    name = ref.name
    matches = [p for p in table if _prefix_matches(p, name)]
    if not matches:
        return [dataclasses.replace(primary, insecure=primary.insecure or ref.registry in insecure_v1)]
    prefix = max(matches, key=len)
    entry = table[prefix]
    if entry.get("blocked"):
        raise _fail(RegistryError, str(ref), f"registries.conf blocks {prefix}")

    def rewrite(location: str) -> tuple[str, str]:
        rest = name[len(prefix) :].lstrip("/") if not prefix.startswith("*.") else name.split("/", 1)[1]
        full = f"{location.rstrip('/')}/{rest}" if rest else location
        h, _, repo = full.partition("/")
        h = DOCKER_HUB_API if h in _HUB_ALIASES else h
        return h, repo if repo else ref.repository

    out = []
    for m in entry.get("mirror") or []:
        if not isinstance(m, dict) or not m.get("location"):
            continue
        only = m.get("pull-from-mirror") or ("digest-only" if entry.get("mirror-by-digest-only") else "all")
        if ref.digest is None and only == "digest-only":
            continue
        if ref.digest is not None and only == "tag-only":
            continue
        h, repo = rewrite(str(m["location"]))
        out.append(Endpoint(h, repo, bool(m.get("insecure")) or _loopback(h), mirror=True))
    location = entry.get("location") if not prefix.startswith("*.") else None
    h, repo = rewrite(str(location)) if location else (host, ref.repository)
    out.append(Endpoint(h, repo, bool(entry.get("insecure")) or _loopback(h) or h in insecure_v1))
    return out


# --------------------------------------------------------------------- the built-in HTTP client


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="…",service="…",scope="…"`` → ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {k.lower(): v for k, v in re.findall(r'(\w+)\s*=\s*"([^"]*)"', rest)}
    params.update({k.lower(): v for k, v in re.findall(r'(\w+)\s*=\s*([^",\s]+)', rest) if k.lower() not in params})
    return scheme.lower(), params


def _error_codes(resp: Any) -> str:
    """The registry's error codes and messages (never echoed request data)."""
    try:
        errors = resp.json().get("errors") or []
        text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors[:3])
    except (ValueError, AttributeError):
        text = ""
    return f"HTTP {resp.status_code}" + (f" ({text[:200]})" if text else "")


class HttpClient:
    """Registry protocol over HTTP(S) with the token flow; used when no engine tool can ask."""

    name = "http"

    def __init__(self, timeout: float = TIMEOUT_S) -> None:
        self.timeout = timeout

    def resolve(self, ref: Reference, engine: str) -> Resolution:
        import requests

        errors: list[RegistryError] = []
        nohttps = engine == "apptainer" and _truthy("APPTAINER_NOHTTPS", "SINGULARITY_NOHTTPS")
        with requests.Session() as session:
            session.headers["User-Agent"] = "consist-registry-client"
            for ep in endpoints(ref, engine):
                # Each endpoint gets its own login: a mirror never sees the registry's password.
                host = DOCKER_HUB if ep.host == DOCKER_HUB_API else ep.host
                creds = find_credentials(ref.with_registry(host, ep.repository), engine)
                schemes = ["http"] if nohttps else (["http", "https"] if _loopback(ep.host) else ["https"])
                if ep.insecure and "http" not in schemes:
                    schemes.append("http")
                try:
                    return self._ask(session, ref, ep, schemes, creds)
                except RegistryError as exc:
                    errors.append(exc)
                    if not ep.mirror:
                        break
        raise errors[-1]

    def _ask(
        self, session: Any, ref: Reference, ep: Endpoint, schemes: list[str], creds: Credential | None
    ) -> Resolution:
        import requests

        last: Exception | None = None
        for scheme in schemes:
            url = f"{scheme}://{ep.host}/v2/{ep.repository}/manifests/{ref.digest or ref.tag}"
            try:
                return self._manifest(session, url, ref, ep, creds)
            except requests.exceptions.SSLError as exc:
                last = exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = exc
        detail = _connection_detail(last, ep.host)
        raise _fail(RegistryUnreachableError, str(ref), detail, creds=creds)

    def _manifest(self, session: Any, url: str, ref: Reference, ep: Endpoint, creds: Credential | None) -> Resolution:
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        resp = session.head(url, headers=headers, timeout=self.timeout, allow_redirects=True, verify=not ep.insecure)
        if resp.status_code == 401:
            headers["Authorization"] = self._authorize(session, resp, ref, ep, creds)
            resp = session.head(
                url, headers=headers, timeout=self.timeout, allow_redirects=True, verify=not ep.insecure
            )
        digest = resp.headers.get("Docker-Content-Digest") if resp.status_code == 200 else None
        media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip() or None
        if resp.status_code in (200, 405) and not (digest and _DIGEST.match(digest)):
            # No digest header (or HEAD not allowed): the digest is the SHA-256 of the manifest bytes.
            resp = session.get(url, headers=headers, timeout=self.timeout, verify=not ep.insecure)
            if resp.status_code == 200:
                digest = "sha256:" + hashlib.sha256(resp.content).hexdigest()
                media_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip() or media_type
        if resp.status_code == 200 and digest:
            return Resolution(str(ref), digest, media_type, self.name, time.time())
        raise self._status_error(resp, ref, creds)

    def _status_error(self, resp: Any, ref: Reference, creds: Credential | None) -> RegistryError:
        detail = _error_codes(resp)
        if resp.status_code == 429:
            retry = resp.headers.get("Retry-After")
            return _fail(RegistryRateLimitError, str(ref), detail + (f", retry after {retry} s" if retry else ""))
        if resp.status_code in (401, 403):
            if resp.request is not None and str(resp.request.headers.get("Authorization", "")).startswith("Bearer"):
                detail += ": the token does not grant pull on this repository"
            return _fail(RegistryAuthError, str(ref), detail, creds=creds)
        if resp.status_code == 404:
            return _fail(RegistryNotFoundError, str(ref), detail, creds=creds)
        return _fail(RegistryError, str(ref), detail, creds=creds)

    def _authorize(self, session: Any, resp: Any, ref: Reference, ep: Endpoint, creds: Credential | None) -> str:
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if creds is None or creds.identity_token:
                raise _fail(RegistryAuthError, str(ref), "the registry asks for a login (HTTP basic)", creds=creds)
            return "Basic " + base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
        if scheme != "bearer" or not params.get("realm"):
            raise _fail(RegistryAuthError, str(ref), f"unsupported authentication challenge {scheme!r}", creds=creds)
        realm = params["realm"]
        realm_host = re.sub(r"^[a-z]+://", "", realm).split("/", 1)[0]
        if creds is not None and realm.startswith("http://") and not (ep.insecure or _loopback(realm_host)):
            raise _fail(
                RegistryAuthError,
                str(ref),
                f"the token service {realm} is plain HTTP; the login is not sent there",
                creds=creds,
            )
        query = {"scope": params.get("scope") or f"repository:{ep.repository}:pull"}
        if params.get("service"):
            query["service"] = params["service"]
        try:
            if creds is not None and creds.identity_token:
                form = {**query, "grant_type": "refresh_token", "refresh_token": creds.secret, "client_id": "consist"}
                tok = session.post(realm, data=form, timeout=self.timeout, verify=not ep.insecure)
            else:
                auth = (creds.username, creds.secret) if creds is not None else None
                if creds is not None:
                    query["account"] = creds.username
                tok = session.get(realm, params=query, auth=auth, timeout=self.timeout, verify=not ep.insecure)
        except Exception as exc:  # the token service is part of the registry: unreachable means unreachable
            raise _fail(RegistryUnreachableError, str(ref), _connection_detail(exc, realm), creds=creds) from None
        if tok.status_code == 429:
            raise self._status_error(tok, ref, creds)
        if tok.status_code != 200:
            what = "the token service refused the login" if creds else "the token service refused an anonymous token"
            raise _fail(RegistryAuthError, str(ref), f"{what}: {_error_codes(tok)}", creds=creds)
        try:
            body = tok.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not token:
            raise _fail(RegistryAuthError, str(ref), "the token service sent no token", creds=creds)
        return f"Bearer {token}"


def _connection_detail(exc: BaseException | None, where: str) -> str:
    text = str(exc or "no answer")
    for pat, say in (
        (r"Name or service not known|nodename nor servname|getaddrinfo|NameResolution", "name not resolved"),
        (r"Connection refused", "connection refused"),
        (r"timed out|Timeout", "timed out"),
        (r"Network is unreachable", "network unreachable"),
        (r"SSL|certificate|TLS", "TLS handshake failed"),
    ):
        if re.search(pat, text):
            return f"{where}: {say}"
    return f"{where}: cannot connect"


def _truthy(*names: str) -> bool:
    return any(os.environ.get(n, "").strip().lower() in ("1", "true", "yes", "on") for n in names)


# --------------------------------------------------------------------- skopeo


class SkopeoClient:
    """``skopeo inspect --raw``: containers/image, the library of Podman and of Apptainer's docker:// transport."""

    name = "skopeo"

    def __init__(self, exe: str, timeout: float = 60.0) -> None:
        self.exe = exe
        self.timeout = timeout

    def resolve(self, ref: Reference, engine: str) -> Resolution:
        argv = [self.exe]
        if os.environ.get("CONTAINERS_REGISTRIES_CONF"):  # Podman reads it; skopeo needs the flag
            argv += ["--registries-conf", os.environ["CONTAINERS_REGISTRIES_CONF"]]
        argv += ["inspect", "--raw", "--retry-times", "0"]
        pass_fds: tuple[int, ...] = ()
        fd = None
        creds = None
        if engine == "apptainer":
            if _truthy("APPTAINER_NOHTTPS", "SINGULARITY_NOHTTPS"):
                argv.append("--tls-verify=false")
            creds = find_credentials(ref, engine)
            if creds is not None and not creds.identity_token:
                # Apptainer's own login comes first, as in Apptainer; skopeo reads it from a file
                # that exists only in memory (never on disk, never on the command line).
                auth = base64.b64encode(f"{creds.username}:{creds.secret}".encode()).decode()
                fd = os.memfd_create("consist-registry-auth", 0)
                os.write(fd, json.dumps({"auths": {ref.registry: {"auth": auth}}}).encode())
                argv += ["--authfile", f"/proc/self/fd/{fd}"]
                pass_fds = (fd,)
        argv.append(f"docker://{ref}")
        try:
            proc = subprocess.run(
                argv, capture_output=True, timeout=self.timeout, stdin=subprocess.DEVNULL, pass_fds=pass_fds
            )
        except subprocess.TimeoutExpired:
            raise _fail(RegistryUnreachableError, str(ref), f"skopeo got no answer within {self.timeout:g} s")
        finally:
            if fd is not None:
                os.close(fd)
        if creds is None:
            creds = find_credentials(ref, engine) if proc.returncode != 0 else None
        if proc.returncode != 0:
            raise self._error(ref, proc.stderr.decode(errors="replace"), creds)
        raw = proc.stdout
        try:
            media_type = json.loads(raw).get("mediaType")
        except (ValueError, AttributeError):
            media_type = None
        return Resolution(str(ref), "sha256:" + hashlib.sha256(raw).hexdigest(), media_type, self.name, time.time())

    @staticmethod
    def _error(ref: Reference, stderr: str, creds: Credential | None) -> RegistryError:
        msg = re.sub(r'^time="[^"]*" level=\w+ msg=', "", stderr.strip().splitlines()[-1] if stderr.strip() else "")
        msg = msg.strip('"').replace("\\n", " ").replace('\\"', '"')
        msg = re.sub(r"Error parsing image name \"[^\"]*\": ", "", msg)
        low = msg.lower()
        if re.search(r"toomanyrequests|too many requests|\b429\b|rate limit", low):
            kind: type[RegistryError] = RegistryRateLimitError
        elif re.search(r"unauthorized|denied|authentication required|invalid username|\b40[13]\b", low):
            kind = RegistryAuthError
        elif "manifest unknown" in low or "name unknown" in low or "not found" in low:
            kind = RegistryNotFoundError
        elif re.search(
            r"pinging container registry|dial tcp|no such host|i/o timeout|connection refused|unreachable", low
        ):
            kind = RegistryUnreachableError
        else:
            kind = RegistryError
        return _fail(kind, str(ref), msg or "skopeo failed", creds=creds)


# --------------------------------------------------------------------- the Docker daemon


class DaemonClient:
    """The Docker daemon's distribution endpoint: what ``docker pull`` would resolve, with its settings."""

    name = "daemon"

    def __init__(self, api: Any) -> None:
        self.api = api

    def resolve(self, ref: Reference, engine: str) -> Resolution:
        import docker

        target = str(ref) if ref.registry != DOCKER_HUB else str(ref).removeprefix("docker.io/")
        try:
            self.api.reload_config()  # like the docker CLI: read config.json (and credential helpers) now
        except Exception:
            pass
        try:
            data = self.api.inspect_distribution(target)
        except docker.errors.APIError as exc:
            text = str(getattr(exc, "explanation", None) or exc)
            low = text.lower()
            if re.search(r"toomanyrequests|too many requests|rate limit", low) or exc.status_code == 429:
                kind: type[RegistryError] = RegistryRateLimitError
            elif re.search(r"unauthorized|denied|authentication required|invalid username|no basic auth", low):
                kind = RegistryAuthError
            elif "manifest unknown" in low or "not found" in low or "name unknown" in low:
                kind = RegistryNotFoundError
            elif re.search(r"dial tcp|no such host|i/o timeout|connection refused|unreachable|timeout", low):
                kind = RegistryUnreachableError
            else:
                kind = RegistryError
            creds = find_credentials(ref, "docker") if kind is RegistryAuthError else None
            raise _fail(kind, str(ref), re.sub(r"\s+", " ", text), creds=creds) from None
        except Exception as exc:  # the daemon itself went away
            raise _fail(RegistryUnreachableError, str(ref), f"the Docker daemon did not answer: {exc}") from None
        desc = data.get("Descriptor") or {}
        digest = desc.get("digest")
        if not digest:
            raise _fail(RegistryError, str(ref), "the Docker daemon reported no digest")
        return Resolution(str(ref), digest, desc.get("mediaType"), self.name, time.time())


# --------------------------------------------------------------------- choosing a client, the per-process cache


def client_for(engine: str, docker_api: Callable[[], Any] | None = None) -> Any:
    """The client that asks the registry the way ``engine`` would (``CONSIST_REGISTRY_CLIENT`` overrides)."""
    choice = os.environ.get("CONSIST_REGISTRY_CLIENT", "auto").strip().lower() or "auto"
    if choice not in ("auto", "daemon", "skopeo", "http"):
        raise ImageNotFoundError(
            f"CONSIST_REGISTRY_CLIENT={choice!r} is not a registry client", None, "use auto, daemon, skopeo or http"
        )
    if choice in ("auto", "daemon") and engine == "docker" and docker_api is not None:
        return DaemonClient(docker_api())
    if choice in ("auto", "skopeo"):
        exe = shutil.which("skopeo")
        if exe:
            return SkopeoClient(exe)
        if choice == "skopeo":
            raise ImageNotFoundError(
                "CONSIST_REGISTRY_CLIENT=skopeo but skopeo is not installed",
                None,
                "apt-get install skopeo, or unset it",
            )
    return HttpClient()


def ttl() -> float:
    raw = os.environ.get("CONSIST_REGISTRY_TTL", "").strip()
    if not raw:
        return DEFAULT_TTL_S
    try:
        value = float(raw)
    except ValueError:
        raise ImageNotFoundError(
            f"CONSIST_REGISTRY_TTL={raw!r} is not a number of seconds", None, "set it to e.g. 300, or 0 to always ask"
        ) from None
    return max(value, 0.0)


_lock = threading.Lock()
_key_locks: dict[tuple[str, str], threading.Lock] = {}
_answers: dict[tuple[str, str], tuple[float, Resolution | RegistryUnreachableError]] = {}  # key → (when, answer)
# How many times a registry was really asked (tests and benchmarks read it).
requests_made = 0


def clear_cache() -> None:
    """Forget every answer (the next resolution asks the registry again)."""
    with _lock:
        _answers.clear()


def resolve(image: str, engine: str, *, docker_api: Callable[[], Any] | None = None) -> Resolution:
    """The digest ``image`` has at its registry now, asked at most once per reference and TTL.

    A pinned ``@sha256:`` reference is answered without asking. An unreachable
    registry is remembered for the TTL too, so a sweep on an offline node does
    not wait for a connection per step. Every fresh answer is recorded on disk.
    """
    global requests_made
    ref = Reference.parse(image)
    if ref.digest:
        return Resolution(str(ref), ref.digest, None, "pinned", time.time())
    key = (engine, str(ref))
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:  # one request per reference even when threads ask at once
        now = time.monotonic()
        keep = ttl()  # read at every call, so a changed CONSIST_REGISTRY_TTL applies at once
        cached = _answers.get(key)
        if cached is not None:
            age = now - cached[0]
            answer_or_error = cached[1]
            limit = min(keep, 60.0) if isinstance(answer_or_error, RegistryUnreachableError) else keep
            if age < limit:
                if isinstance(answer_or_error, RegistryUnreachableError):
                    raise answer_or_error
                return answer_or_error
        client = client_for(engine, docker_api)
        requests_made += 1
        try:
            answer = client.resolve(ref, engine)
        except RegistryUnreachableError as exc:
            _answers[key] = (now, exc)  # an offline sweep does not wait for a connection per step
            raise
        _answers[key] = (now, answer)
        record(answer)
        return answer


# --------------------------------------------------------------------- what was resolved, on disk


def cache_dir() -> Path:
    if os.environ.get("CONSIST_CACHE_DIR"):
        return Path(os.environ["CONSIST_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or _home() / ".cache") / "consist"


def _record_path() -> Path:
    return cache_dir() / "image-digests.json"


def _read_records(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    refs = data.get("references") if isinstance(data, dict) else None
    return refs if isinstance(refs, dict) else {}


def record(answer: Resolution) -> None:
    """Remember ``reference → digest`` for nodes that cannot reach the registry (best effort)."""
    from filelock import FileLock, Timeout

    path = _record_path()
    entry = {"digest": answer.digest, "media_type": answer.media_type, "resolved_at": answer.resolved_at}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            refs = _read_records(path)
            if refs.get(answer.reference, {}).get("digest") == answer.digest and (
                answer.resolved_at - float(refs[answer.reference].get("resolved_at") or 0) < 3600
            ):
                return
            refs[answer.reference] = entry
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": 1, "references": refs}, indent=1, sort_keys=True) + "\n")
            os.replace(tmp, path)
    except (OSError, Timeout):
        pass  # a read-only home must not stop a run; offline fallback is then unavailable


def recorded(image: str) -> Resolution | None:
    """The digest recorded when ``image`` was last resolved, or None."""
    ref = Reference.parse(image)
    entry = _read_records(_record_path()).get(str(ref))
    if not isinstance(entry, dict) or not _DIGEST.match(str(entry.get("digest"))):
        return None
    return Resolution(
        str(ref), entry["digest"], entry.get("media_type"), "recorded", float(entry.get("resolved_at") or 0)
    )


def platform_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)


def apptainer_cache_dirs() -> Iterable[Path]:
    """Apptainer's cache: ``$APPTAINER_CACHEDIR/cache`` (it adds ``cache``), else ``~/.apptainer/cache``."""
    for var in ("APPTAINER_CACHEDIR", "SINGULARITY_CACHEDIR"):
        if os.environ.get(var):
            yield Path(os.environ[var]) / "cache"
            return
    yield _home() / ".apptainer" / "cache"


def apptainer_cached_sif(digest: str, env: Mapping[str, str] | None = None) -> Path | None:
    """The SIF Apptainer built from the image with this manifest (or index) digest, if it is in its cache.

    Apptainer 1.x names its converted images ``oci-tmp/<sha256(digest hex + architecture)>``.
    """
    if not _DIGEST.match(digest) or _truthy("APPTAINER_DISABLE_CACHE", "SINGULARITY_DISABLE_CACHE"):
        return None
    name = hashlib.sha256((digest.split(":", 1)[1] + platform_arch()).encode()).hexdigest()
    for d in apptainer_cache_dirs():
        path = d / "oci-tmp" / name
        if path.is_file() and path.stat().st_size > 0:
            return path
    return None


__all__ = [
    "Credential",
    "Reference",
    "RegistryAuthError",
    "RegistryError",
    "RegistryNotFoundError",
    "RegistryRateLimitError",
    "RegistryUnreachableError",
    "Resolution",
    "apptainer_cached_sif",
    "clear_cache",
    "find_credentials",
    "recorded",
    "resolve",
]
