"""Apptainer / Singularity: SIF files and docker:// references.

A SIF file's identity is the SHA-256 of its content (through the hash memo,
so a multi-GB image is hashed once per file version): overwriting a ``.sif``
in place changes the cache key. ``docker://`` references resolve to their
registry manifest digest and run pinned to it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import BackendUnavailableError, ContainerError, ImageNotFoundError
from ..hashing import FileHasher, HashMemo, NullMemo
from .base import Backend, ContainerSpec, ImageRef, Launch, check_environment
from .mounts import check_mount_args
from .oci import split_reference

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


def registry_digest(reference: str, timeout: float = 20.0) -> str:
    """The manifest digest a registry serves for ``host/repo:tag`` (HTTP for loopback hosts)."""
    repo, tag, digest = split_reference(reference)
    if digest:
        return digest
    host, _, path = repo.partition("/")
    if not path or not ("." in host or ":" in host or host == "localhost"):
        host, path = "registry-1.docker.io", repo if "/" in repo else f"library/{repo}"
    scheme = "http" if host.split(":")[0] in ("127.0.0.1", "localhost") else "https"
    req = urllib.request.Request(
        f"{scheme}://{host}/v2/{path}/manifests/{tag or 'latest'}", method="HEAD", headers={"Accept": _MANIFEST_TYPES}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            found = resp.headers.get("Docker-Content-Digest")
    except (urllib.error.URLError, OSError) as exc:
        raise ImageNotFoundError(
            f"Cannot resolve docker://{reference} at its registry: {exc}",
            "the registry is unreachable, the name or tag is wrong, or it needs a login",
            "build a .sif file (`apptainer build image.sif docker://...`) and pass its path",
        ) from exc
    if not found:
        raise ImageNotFoundError(f"The registry gave no digest for docker://{reference}", None, "pin it with @sha256:")
    return found


class ApptainerBackend(Backend):
    """Apptainer, or Singularity where only that is installed."""

    name = "apptainer"

    def __init__(self, memo: HashMemo | None = None) -> None:
        self.memo: HashMemo = memo or NullMemo()

    def executable(self) -> str:
        for exe in ("apptainer", "singularity"):
            path = shutil.which(exe)
            if path:
                return path
        raise BackendUnavailableError(
            "Neither apptainer nor singularity is installed",
            "backend_type='singularity'/'apptainer' runs containers through that CLI",
            "install Apptainer (https://apptainer.org) or load its module on the cluster (`module load apptainer`)",
        )

    def resolve(self, image: str, *, pull_latest: bool = False) -> ImageRef:
        self.executable()
        if image.startswith("docker://"):
            ref = image[len("docker://") :]
            digest = registry_digest(ref)
            repo, _tag, _ = split_reference(ref)
            return ImageRef(image, digest, f"docker://{repo}@{digest}", "registry")
        path = Path(image.removeprefix("sif://")).expanduser()
        if not path.is_file():
            raise ImageNotFoundError(
                f"SIF image {image!r} does not exist",
                "the path is wrong or relative to another directory",
                f"check the .sif path (resolved to {path.resolve()}), or build it with `apptainer build`",
            )
        digest = FileHasher(self.memo).hash_file(path.resolve())
        return ImageRef(image, digest, str(path.resolve()), "sif-file")

    def launch(self, spec: ContainerSpec) -> Launch:
        """``exec --cleanenv --contain`` with ``--bind src:dst[:ro]`` per volume.

        Environment values travel as ``APPTAINERENV_<NAME>`` in the engine's
        environment, the one channel ``--cleanenv`` lets through; the host's own
        variables stay as they are for the engine process.
        """
        cmd = [Path(self.executable()).name, "exec", "--cleanenv", "--contain", "--writable-tmpfs"]
        for m in spec.mounts:
            cmd += ["--bind", f"{m.source}:{m.container}" + (":ro" if m.read_only else "")]
        if spec.working_dir:
            cmd += ["--pwd", spec.working_dir]
        check_mount_args(self.mounts_in(cmd), spec.mounts)  # engine options only: the command is the tool's
        cmd.append(spec.image.run_ref)
        cmd += list(spec.command)
        check_environment(spec.environment)
        if "HOME" in spec.environment:
            raise ContainerError(
                "Apptainer does not let the environment set HOME inside the container",
                "it always sets HOME itself (from the host user, or --home)",
                "pass the value under another name, or use backend_type='docker' or 'podman'",
            )
        env = dict(os.environ)
        for key, value in spec.environment.items():
            # Apptainer evaluates these values like a here-document: $, ` and \ would be expanded.
            literal = value.replace("\\", "\\\\").replace("$", "\\$").replace("`", "\\`")
            env[f"APPTAINERENV_{key}"] = literal
            env[f"SINGULARITYENV_{key}"] = literal
        return Launch(cmd, env)

    @staticmethod
    def mounts_in(argv: list[str]) -> list[tuple[str, str, bool]]:
        """The bind mounts apptainer will read from ``argv``."""
        found = []
        for flag, value in itertools.pairwise(argv):
            if flag != "--bind":
                continue
            parts = value.split(":")
            if "," in value or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "ro"):
                found.append(("?", value, False))
                continue
            found.append((parts[0], parts[1], len(parts) == 3))
        return found
