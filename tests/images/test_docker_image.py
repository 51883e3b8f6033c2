"""lab.images.docker without the docker SDK (an optional extra, blackhole-lab[docker]): the
image's name and `lab clean`'s part need no engine, so they work without the module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lab.images import docker as docker_image

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_DOCKER = """
import sys
sys.modules["docker"] = None  # `import docker` raises ImportError, as without the extra
from lab.images import docker as docker_image
print(docker_image.image_ref())
print(docker_image.clean())
"""


def test_image_ref_and_clean_need_no_docker_module(tmp_path: Path) -> None:
    root = tmp_path / "image-build"
    (root / "build-123-abcdef" / "rootfs").mkdir(parents=True)  # a killed build's leftovers
    (root / "logs").mkdir()  # a failed build's logs stay until the next build
    proc = subprocess.run([sys.executable, "-c", WITHOUT_DOCKER], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "BHL_IMAGE_BUILD_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr
    ref, removed = proc.stdout.splitlines()
    assert ref == docker_image.image_ref()
    assert removed == f"['image build leftovers {root / 'build-123-abcdef'}']"
    assert sorted(p.name for p in root.iterdir()) == [".lock", "logs"]
