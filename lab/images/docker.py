"""`lab image build`: the lab's local, offline backend image (no registry needed).

A debootstrap of Debian bookworm (minbase + mariadb-server + nginx-light + iproute2), imported
with `docker import` as REPOSITORY:<tag>. The tag is a hash of the build's inputs, so a
changed recipe gets a new image and an unchanged one is never rebuilt: `build()` returns at
once when the tagged image is present (idempotent). The rootfs and tarball live in a build dir
that is removed after the import, whatever happens (also when a killed build left one).
MariaDB's datadir in the image is the one the package postinst initialised (root via
unix_socket), so a container needs no mariadb-install-db.

Each stage (debootstrap, tar, docker import) prints its time; a failed one keeps its log in
BUILD_ROOT/logs/ (lab.images.progress). The docker SDK is imported only by the functions that
talk to an engine, so image_ref() and clean() work without it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.images import debootstrap, progress
from lab.images.progress import Say

if TYPE_CHECKING:  # the SDK is an optional extra (blackhole-lab[docker]): imported on use
    import docker

REPOSITORY = "blackhole-lab/base"
SUITE = debootstrap.SUITE
VARIANT = "minbase"
PACKAGES = ("mariadb-server", "nginx-light", "iproute2")
RECIPE_VERSION = 1  # bump when the build steps below change what ends up in the image
# Beside the lab's private dockerd data-root (lab.backends.docker.engine), which loads the
# image from here; the label marks the images this module made, so `lab clean` knows them.
BUILD_ROOT = Path(os.environ.get("BHL_IMAGE_BUILD_ROOT", "/var/lib/blackhole-lab/image-build"))
TITLE = "docker image"
LABEL_IMAGE = "blackhole-lab.image"
# what a container gets from the image (docker import keeps no metadata of its own)
CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)


@dataclass(frozen=True)
class BuildReport:
    ref: str
    built: bool  # False: it was present, nothing was done
    seconds: float
    size_bytes: int

    def line(self) -> str:
        what = "built" if self.built else "present, build skipped"
        return (f"image {self.ref}: {what} in {self.seconds:.1f} s, "
                f"size {self.size_bytes / 1e6:.0f} MB")


def inputs() -> dict[str, object]:
    """Everything that decides the image's content (the mirror does not)."""
    return {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES),
            "changes": list(CHANGES), "recipe": RECIPE_VERSION}


def image_ref() -> str:
    digest = hashlib.sha256(json.dumps(inputs(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{REPOSITORY}:{SUITE}-{digest}"


def find(client: docker.DockerClient) -> int | None:
    """The lab image's size in bytes if the engine has it."""
    import docker.errors

    try:
        return int(client.images.get(image_ref()).attrs.get("Size", 0))
    except docker.errors.ImageNotFound:
        return None


def clean() -> list[str]:
    """`lab clean`: build dirs a killed build left (unless a build runs now)."""
    if not BUILD_ROOT.is_dir():
        return []
    removed = []
    with open(BUILD_ROOT / ".lock", "a") as lock:  # "a": the holder's pid in it stays
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a build is running; it removes its own dir
        for stale in BUILD_ROOT.glob("build-*"):
            debootstrap.remove_tree(stale)
            removed.append(f"image build leftovers {stale}")
    return removed


def build(client: docker.DockerClient, *, mirror: str | None = None,
          say: Say = progress.to_stderr, heartbeat_s: float = progress.HEARTBEAT_S) -> BuildReport:
    """The lab image in `client`'s engine; built only when absent (serialised by an flock)."""
    t0 = time.monotonic()
    ref = image_ref()
    size = find(client)
    if size is not None:
        return BuildReport(ref, False, time.monotonic() - t0, size)
    debootstrap.check_debootstrap()
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with progress.exclusive(BUILD_ROOT / ".lock", TITLE, say):
        size = find(client)
        if size is not None:  # another builder finished while we waited
            return BuildReport(ref, False, time.monotonic() - t0, size)
        for stale in BUILD_ROOT.glob("build-*"):
            debootstrap.remove_tree(stale)  # left by a killed build (we hold the lock)
        work = BUILD_ROOT / f"build-{os.getpid()}-{secrets.token_hex(3)}"
        work.mkdir()
        try:
            with progress.Build(TITLE, BUILD_ROOT / "logs", say, stages=3,
                                heartbeat_s=heartbeat_s) as stages:
                _debootstrap_and_import(client, work, mirror or debootstrap.host_mirror(), ref,
                                        stages)
        finally:
            debootstrap.remove_tree(work)
    size = find(client)
    if size is None:
        raise RuntimeError(f"{ref} not in the engine after its import")
    return BuildReport(ref, True, time.monotonic() - t0, size)


def _debootstrap_and_import(client: docker.DockerClient, work: Path, mirror: str, ref: str,
                            stages: progress.Build) -> None:
    import docker.errors

    rootfs = work / "rootfs"
    with stages.stage("debootstrap", f"{SUITE} {VARIANT} + {', '.join(PACKAGES)} from "
                      f"{mirror}, for {ref}") as log:
        debootstrap.debootstrap(rootfs, log, include=PACKAGES, variant=VARIANT, mirror=mirror)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (rootfs / junk).glob("*"):
            if item.is_file():
                item.unlink()
    tarball = work / "rootfs.tar"
    with stages.stage("tar", "the root filesystem, owners and xattrs kept") as log:
        # shelling out: tar(1) keeps owners, modes, devices and xattrs exactly; the SDK
        # imports a tarball but cannot make one from a directory
        debootstrap.run_logged(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf",
                                str(tarball), "."], "tar", log)
    shutil.rmtree(rootfs, ignore_errors=True)
    repository, tag = ref.rsplit(":", 1)
    with stages.stage("docker import", f"as {ref}") as log:
        try:
            said = client.api.import_image(src=str(tarball), repository=repository, tag=tag,
                                           changes=[*CHANGES, f"LABEL {LABEL_IMAGE}={tag}"])
        except docker.errors.DockerException as exc:
            log.write_text(f"{exc}\n")
            raise LabError(f"the engine refused the import: {exc}",
                           "is the engine's data-root full or read-only?") from None
        log.write_text(said if isinstance(said, str) else json.dumps(said))
