"""Which host paths a container may see, and how they reach the engine unaltered.

Two rules hold for every engine:

- **What may be mounted.** A host path is resolved (``..`` and symlinks) first.
  With ``strict`` it must lie under an allowed root (the tracker's run_dir,
  project_root or mounts), and never be, contain or lie under a denied path:
  the file system root, system directories, engine sockets and engine state,
  a home directory or one of its ancestors. A broad allowed root does not
  lift the deny list.
- **What the engine is told.** Mount options are comma/colon separated strings
  (``--mount type=bind,source=…,target=…``, ``--bind src:dst``), so a path
  holding ``,`` ``:`` ``=`` or a line break could add an option or a second
  mount. Container paths are restricted to characters no engine treats
  specially. A host path with any other character is not spelled out at all:
  it is reached through a symlink with a plain name in a private staging
  directory, which the kernel follows when it makes the bind mount. Backends
  then check their finished argument vector (:func:`check_mount_args`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ..errors import ConsistError, PathNotAllowedError
from ..locations import is_inside

# Parents of engine sockets and state, system directories. A host path that is one of
# these, lies under one, or contains one (so mounting it would expose it) is refused.
DENIED = (
    "/etc", "/proc", "/sys", "/dev", "/boot", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    "/var/run/docker.sock", "/run/docker.sock", "/run/podman", "/var/run/podman", "/run/containerd",
    "/var/run/containerd", "/var/lib/docker", "/var/lib/containers", "/var/lib/containerd", "/run/user",
    "/var/lib/apptainer", "/var/lib/singularity",
)  # fmt: skip

# Characters a path may hold and still be written into any engine's mount syntax verbatim.
_PLAIN = re.compile(r"/[A-Za-z0-9._@%+~/-]*")  # matched whole: `$` would let a final newline through


@dataclasses.dataclass(frozen=True)
class Mount:
    """A bind mount: ``host`` (absolute, resolved) appears at ``container`` inside.

    ``source`` is what the engine is given for ``host``: the path itself, or a
    plain-named symlink to it when the path holds characters an engine's mount
    syntax would interpret.
    """

    host: Path
    container: str
    read_only: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        if not self.source:
            object.__setattr__(self, "source", str(self.host))


def plain(path: str) -> bool:
    """True when ``path`` can be written into every engine's mount syntax as it is."""
    return bool(_PLAIN.fullmatch(path)) and "//" not in path


def normalize_volumes(volumes: Mapping[str, str] | Sequence[str] | None) -> list[tuple[str, str, bool]]:
    """``(host, container, read_only)`` from a dict or from Docker's ``"host:container[:ro]"`` strings."""
    if volumes is None:
        return []
    if isinstance(volumes, Mapping):
        return [(str(h) if isinstance(h, os.PathLike) else h, c, False) for h, c in volumes.items()]
    if isinstance(volumes, (str, bytes)):
        volumes = [volumes]  # type: ignore[list-item]
    out = []
    for item in volumes:
        if not isinstance(item, str):
            raise ConsistError(
                f"Cannot read the volume {item!r}",
                "volumes is a list, so each entry must be a 'host:container' or 'host:container:ro' string",
                'pass a dict instead: volumes={"./data": "/inputs", "./outputs": "/outputs"}',
            )
        parts = item.split(":")
        mode = parts.pop() if len(parts) == 3 and parts[2] in ("ro", "rw") else "rw"
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConsistError(
                f"Cannot read the volume {item!r}",
                "the list form is 'host:container' or 'host:container:ro', with no other ':'",
                f'pass a dict instead: volumes={{"{parts[0] if parts else "./data"}": "/inputs"}}',
            )
        out.append((parts[0], parts[1], mode == "ro"))
    return out


def check_container_path(target: object, host: object) -> str:
    """A validated, normalised absolute container path."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise ConsistError(
            f"Container path {target!r} for host path {host!r} is not absolute",
            None,
            'map host paths to absolute container paths, e.g. {"./data": "/inputs"}',
        )
    norm = os.path.normpath(target)
    if not plain(norm) or norm in ("/", "/.") or any(part == ".." for part in norm.split("/")):
        raise ConsistError(
            f"Container path {target!r} is not allowed",
            "container paths may hold only letters, digits and . _ - @ % + ~ /, and may not be '/' itself: "
            "an engine would read ',' ':' '=' or a line break as the start of another mount option",
            "choose a plain path such as /inputs",
        )
    return norm


def resolve_host(path: str | os.PathLike[str]) -> Path:
    """The absolute host path, relative to the current directory, symlinks and ``..`` resolved."""
    if isinstance(path, str) and ("\0" in path or not path):
        raise ConsistError(f"Host path {path!r} is empty or holds a NUL byte", None, "pass a real directory")
    return (Path.cwd() / Path(path).expanduser()).resolve()


def _under(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or lies inside it; compared as text (both are normalised absolute paths)."""
    p = str(path)
    return p == str(root) or is_inside(p, str(root))


def check_sensitive(path: Path, what: str = "host path") -> None:
    """Refuse the root, system paths, engine sockets and state, and home directories,
    whether ``path`` is one of them, lies under one or contains one."""
    denied = [Path(d) for d in DENIED]
    for d in (Path("/var/run/docker.sock"), Path("/var/run/podman")):
        try:
            denied.append(d.resolve())  # /var/run is usually a link to /run
        except OSError:
            pass
    hit = path == Path("/") or any(_under(home, path) for home in _homes())
    hit = hit or any(_under(path, d) or _under(d, path) for d in denied)
    if hit:
        raise PathNotAllowedError(
            f"Refusing to mount {what} {path} into a container",
            "it is the file system root, a home directory (or contains one), a system directory, "
            "or an engine socket or engine state directory (or contains one)",
            "mount only the data folders the tool needs; pass strict_mounts=False to lift this check",
        )


def _homes() -> list[Path]:
    """Home directories of root, the caller and login users (uid >= 1000)."""
    homes = {Path.home(), *_login_homes()}
    out = []
    for h in homes:
        try:
            resolved = h.resolve()
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
            continue
        if resolved != Path("/") and resolved.is_dir():
            out.append(resolved)
    return out


_LOGIN_HOMES: tuple[tuple[int, int, int] | None, list[Path]] = (None, [])


def _login_homes() -> list[Path]:
    """The home folders of root and login users (uid >= 1000): read again whenever /etc/passwd changes
    (users known only to a directory service such as LDAP are read once per process)."""
    global _LOGIN_HOMES
    try:
        st = os.stat("/etc/passwd")
        key: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is None or _LOGIN_HOMES[0] != key:
        try:
            import pwd

            found = [Path(u.pw_dir) for u in pwd.getpwall() if u.pw_uid == 0 or u.pw_uid >= 1000]
        except (ImportError, KeyError, OSError):
            found = []
        _LOGIN_HOMES = (key, found)
    return _LOGIN_HOMES[1]


def check_under_roots(path: Path, roots: Iterable[Path], what: str = "host path") -> None:
    roots = list(roots)
    if not any(_under(path, r) for r in roots):
        raise PathNotAllowedError(
            f"The {what} {path} lies outside the allowed roots ({', '.join(map(str, roots))})",
            "strict_mounts=True lets containers see only the run_dir, the project root and the tracker's mounts",
            f'add it to the tracker\'s mounts (Tracker(..., mounts={{"data": "{path}"}})), or pass strict_mounts=False',
        )


def plan_mounts(
    volumes: Mapping[str, str] | Sequence[str] | None, *, roots: Sequence[Path], strict: bool
) -> list[Mount]:
    """Validated bind mounts; relative host paths resolve against the current directory."""
    mounts = []
    seen: set[str] = set()
    for host, target, read_only in normalize_volumes(volumes):
        container = check_container_path(target, host)
        if container in seen:
            raise ConsistError(f"Two volumes map to the container path {container!r}", None, "use distinct paths")
        seen.add(container)
        path = resolve_host(host)
        if strict:
            check_sensitive(path)
            check_under_roots(path, roots)
        mounts.append(Mount(path, container, read_only))
    return mounts


class Staging:
    """Plain-named symlinks for host paths an engine's mount syntax cannot carry verbatim.

    Made in a private directory (mode 0700) under ``base`` for one container run
    and removed afterwards. The kernel resolves the link when it makes the bind
    mount, so the container sees exactly the resolved host path.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.dir: Path | None = None

    def apply(self, mounts: Sequence[Mount]) -> list[Mount]:
        out = []
        for i, m in enumerate(mounts):
            if plain(str(m.host)):
                out.append(m)
                continue
            if self.dir is None:
                self.base.mkdir(parents=True, exist_ok=True)
                self.dir = self.base / uuid.uuid4().hex
                self.dir.mkdir(mode=0o700)
            link = self.dir / f"m{i}"
            os.symlink(m.host, link)
            out.append(dataclasses.replace(m, source=str(link)))
        return out

    def cleanup(self) -> None:
        if self.dir is None:
            return
        for link in self.dir.iterdir():
            link.unlink()
        self.dir.rmdir()
        self.dir = None


def check_mount_args(pairs: Sequence[tuple[str, str, bool]], mounts: Sequence[Mount]) -> None:
    """Check that the mounts an engine will parse from its argv are exactly the planned ones.

    ``pairs`` is what the backend reads back from its finished argument vector
    (source, container, read-only), in order.
    """
    want = [(m.source, m.container, m.read_only) for m in mounts]
    if list(pairs) != want:
        raise ConsistError(
            "The engine command would not mount exactly the planned volumes",
            f"planned {want}, the command says {list(pairs)}",
            "report this as a bug in consist; meanwhile use plain directory names",
        )
