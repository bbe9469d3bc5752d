"""The render step: one model version in one environment → the files of its GitOps folder.

Values from the registry (model names, descriptions, run ids, commits) are untrusted text. They
reach the YAML only through ``{{ }}``, and every ``{{ }}`` is written as a double-quoted YAML
scalar with everything outside printable ASCII escaped (see ``yaml_scalar``), so no value can add
a key, a list item or a document. The folder is then validated strictly (steps/manifests.py)
before it is returned, so a template mistake fails the step instead of reaching the cluster.

No ``from __future__ import annotations`` here: Hera's runner reads ``render``'s annotations as
classes.
"""

import functools
import json
import re
from pathlib import Path
from typing import Any

import jinja2
from hera.workflows import Input, Output

from mlferry.steps.outcome import as_argo_step
from mlferry.steps.layout import check_version, folder_digest, gitops_folder, model_uri
from mlferry.steps.manifests import KUSTOMIZATION, validate_folder
from mlferry.steps.model_settings import ModelServing
from mlferry.steps.naming import is_dns_subdomain, is_label_value, serving_name, slugify
from mlferry.steps.settings import Settings, load_settings

TEMPLATES = Path(__file__).with_name("templates")

# What each runtime puts in the folder besides kustomization.yaml (which lists them).
RUNTIME_FILES: dict[str, tuple[str, ...]] = {
    "deployment": ("deployment.yaml", "service.yaml"),
    "kserve": ("inferenceservice.yaml", "serviceaccount.yaml"),
}
SERVING_PORT = 8080
# The API server caps all annotations of an object at 256 KiB; the description is there for
# people browsing the cluster, and the registry keeps the full text.
MAX_DESCRIPTION = 16 * 1024


class RenderInput(Input):
    model: str  # the registered model's name, exactly as in MLflow
    version: str
    slug: str  # slugify(model), computed by the step that resolved the version
    env: str
    run_id: str = ""
    source_commit: str = ""
    description: str = ""
    serving: ModelServing = ModelServing()  # the registered model's mlferry.* tags, checked by resolve
    hold: str = ""  # why this version is held here (steps/rule.py); "" when it follows the rule
    # The workflow passes description and source_commit here, as resolve's Argo-safe JSON: registry
    # text holding `{{` would otherwise be read by Argo as a template variable. Given, it wins.
    registry_text: str = ""


class Rendered(Output):
    folder: str  # teams/<team>/<slug>/<env>
    files: dict[str, str]  # file name → YAML text
    digest: str  # folder_digest(files)


@as_argo_step
def render(inputs: RenderInput) -> Rendered:
    return render_folder(inputs, load_settings())


def render_folder(inputs: RenderInput, settings: Settings) -> Rendered:
    inputs = with_registry_text(inputs)
    runtime = inputs.serving.runtime or settings.runtime  # the model's tag wins over the team's setting
    resource_files = runtime_files(runtime)
    values = template_values(inputs, settings, resource_files)
    templates = _templates()
    files = {KUSTOMIZATION: templates.get_template("kustomization.yaml.j2").render(values)}
    for file_name in resource_files:
        files[file_name] = templates.get_template(f"{runtime}/{file_name}.j2").render(values)
    files = {name: files[name] for name in sorted(files)}
    folder = gitops_folder(settings.team, inputs.slug, inputs.env)
    validate_folder(files, folder)
    return Rendered(folder=folder, files=files, digest=folder_digest(files))


def with_registry_text(inputs: RenderInput) -> RenderInput:
    if not inputs.registry_text:
        return inputs
    try:
        text = json.loads(inputs.registry_text)
    except ValueError as err:
        raise ValueError(f"registry_text is not JSON ({err}); it comes from resolve's output") from None
    return inputs.model_copy(update={k: str(text.get(k, "")) for k in ("description", "source_commit")})


def runtime_files(runtime: str) -> tuple[str, ...]:
    try:
        return RUNTIME_FILES[runtime]
    except KeyError:
        known = ", ".join(sorted(RUNTIME_FILES))
        raise ValueError(f"unknown runtime {runtime!r}; mlferry renders: {known}") from None


# ---------------------------------------------------------------------------------------------
# values for the templates


def template_values(inputs: RenderInput, settings: Settings, resource_files: tuple[str, ...]) -> dict[str, Any]:
    check_slug(inputs.model, inputs.slug)
    check_version(inputs.version)
    environment = settings.environment(inputs.env)  # unknown environment: SettingsError
    namespace = settings.namespace(inputs.env)
    name = serving_name(inputs.slug, inputs.env, namespace, settings.runtime)
    uri = model_uri(settings.bucket, inputs.slug, inputs.version)
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(inputs),
        "selector": selector_labels(inputs.slug, inputs.env),
        "annotations": annotations(inputs),
        "resource_files": list(resource_files),
        "model_uri": uri,
        "replicas": environment.replicas if inputs.serving.replicas is None else inputs.serving.replicas,
        "image": settings.serving_image,
        "command": serve_command(uri),
        "port": SERVING_PORT,
        "s3_endpoint": settings.serving_endpoint(inputs.env),
        "s3_secret": check_secret_name(settings.s3_secret),
        "image_pull_secrets": [check_secret_name(s, "serving_image_pull_secrets")
                               for s in settings.serving_image_pull_secrets],
        # One ServiceAccount per folder: a shared one would be owned by several Argo CD
        # Applications, and pruning one model would take the credentials from the others.
        "service_account": name,
        "resources": inputs.serving.resources_over(settings.resources.model_dump()),
    }


def check_slug(model: str, slug: str) -> str:
    """The slug chooses the folder; one that is not this model's would overwrite another model."""
    expected = slugify(model)
    if slug != expected:
        raise ValueError(f"slug {slug!r} does not belong to model {model!r} (its slug is {expected!r})")
    return slug


def check_secret_name(secret: str, setting: str = "s3_secret") -> str:
    if not is_dns_subdomain(secret):
        raise ValueError(f"{setting} {secret!r} is not a valid Secret name (a DNS-1123 subdomain)")
    return secret


def serve_command(uri: str) -> list[str]:
    return ["mlflow", "models", "serve", "-m", uri, "--host", "0.0.0.0", "--port", str(SERVING_PORT),
            "--env-manager", "local"]


def selector_labels(slug: str, env: str) -> dict[str, str]:
    """Labels that never change for this model in this environment: Deployment selectors are
    immutable. (Not app.kubernetes.io/instance: Argo CD may use that one to track its apps.)"""
    return {"mlferry.io/environment": env, "mlferry.io/model": slug}


def labels(inputs: RenderInput) -> dict[str, str]:
    values = {
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": "mlferry",
        "app.kubernetes.io/name": inputs.slug,
        "app.kubernetes.io/version": inputs.version,
        **selector_labels(inputs.slug, inputs.env),
        "mlferry.io/version": inputs.version,
    }
    # MLflow run ids are 32 hex digits; anything else (or none) stays in the annotation only,
    # since an invalid label value would make the API server refuse the whole object.
    if inputs.run_id and is_label_value(inputs.run_id):
        values["mlferry.io/run-id"] = inputs.run_id
    return dict(sorted(values.items()))


def annotations(inputs: RenderInput) -> dict[str, str]:
    """What people browsing git or the cluster read; the model name also says who owns the folder,
    and a hold (when there is one) keeps the folder at this version until released."""
    found = {
        "mlferry.io/description": inputs.description[:MAX_DESCRIPTION],
        "mlferry.io/environment": inputs.env,
        "mlferry.io/model-name": inputs.model,
        "mlferry.io/run-id": inputs.run_id,
        "mlferry.io/source-commit": inputs.source_commit,
        "mlferry.io/version": inputs.version,
    }
    if inputs.hold:
        found["mlferry.io/hold"] = inputs.hold
    return dict(sorted(found.items()))


# ---------------------------------------------------------------------------------------------
# templating


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,  # a misspelt value fails, it does not render empty
        finalize=yaml_scalar,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def yaml_scalar(value: Any) -> str:
    """Any template value as one YAML scalar that cannot span lines or change structure.

    Strings become JSON strings, which are YAML double-quoted scalars, with every character
    outside printable ASCII escaped, and no `{{` (see below). Not ``json.dumps(ensure_ascii=True)`` alone: it writes
    characters beyond U+FFFF as surrogate pairs, which YAML parsers decode as two broken
    characters; YAML's own ``\\UXXXXXXXX`` escape keeps them whole.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"template value {value!r} is a {type(value).__name__}, not a string or integer")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise ValueError(f"{value[:80]!r}… holds an unpaired surrogate, which is not valid Unicode")
    # `{{` is written `{\x7b`: the folder travels to the commit step as an Argo parameter, and Argo
    # would read `{{…}}` as a template variable (YAML reads the escape back as `{`).
    return _NOT_PRINTABLE_ASCII.sub(_escape, json.dumps(value, ensure_ascii=False)).replace("{{", "{\\x7b")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
