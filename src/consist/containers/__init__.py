"""Container engine backends: Docker, Podman and Apptainer/Singularity.

A backend resolves an image reference to a content digest and runs a command
in a container. It knows nothing about provenance or caching; that is
:mod:`consist.integrations.containers`.
"""

from __future__ import annotations

from .base import Backend, ContainerSpec, ExecResult, ImageRef, Mount

BACKEND_NAMES = ("docker", "podman", "apptainer", "singularity")


def get_backend(name: str) -> Backend:
    """The backend for ``backend_type`` (``singularity`` and ``apptainer`` are one backend)."""
    from ..errors import UnknownBackendError

    key = name.lower()
    if key == "docker":
        from .oci import DockerBackend

        return DockerBackend()
    if key == "podman":
        from .oci import PodmanBackend

        return PodmanBackend()
    if key in ("apptainer", "singularity"):
        from .apptainer import ApptainerBackend

        return ApptainerBackend()
    raise UnknownBackendError(
        f"Unknown backend_type {name!r}",
        None,
        f"use one of {', '.join(repr(b) for b in BACKEND_NAMES)}",
    )


__all__ = ["BACKEND_NAMES", "Backend", "ContainerSpec", "ExecResult", "ImageRef", "Mount", "get_backend"]
