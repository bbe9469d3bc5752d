"""Where things live: the contracts users rely on, in one place.

- object store: ``s3://<bucket>/models/<slug>/<version>/``, complete once MANIFEST_NAME exists;
- GitOps repo: ``teams/<team>/<slug>/<env>/``, owned by mlferry, nothing else written.
"""

from __future__ import annotations

import hashlib
import re
from typing import Mapping

from mlferry.steps.naming import check_environment_name, is_dns_label

MANIFEST_NAME = "mlferry-manifest.json"
_VERSION = re.compile(r"^[1-9][0-9]{0,9}$")


def check_version(version: str) -> str:
    if not _VERSION.match(str(version)):
        raise ValueError(f"model version {version!r} is not a positive integer")
    return str(version)


def model_prefix(slug: str, version: str) -> str:
    if not is_dns_label(slug):
        raise ValueError(f"slug {slug!r} is not a DNS-1123 label")
    return f"models/{slug}/{check_version(version)}/"


def model_uri(bucket: str, slug: str, version: str) -> str:
    return f"s3://{bucket}/{model_prefix(slug, version)}"


def team_prefix(team: str) -> str:
    """``teams/<team>/``: everything mlferry writes for a team, with the trailing slash."""
    _check_label("team", team)
    return f"teams/{team}/"


def gitops_folder(team: str, slug: str, env: str) -> str:
    prefix = team_prefix(team)
    _check_label("slug", slug)
    return f"{prefix}{slug}/{check_environment_name(env)}"


def _check_label(what: str, value: str) -> None:
    if not is_dns_label(value):
        raise ValueError(f"{what} {value!r} is not a DNS-1123 label")


_FOLDER = re.compile(r"^teams/([a-z0-9-]+)/([a-z0-9-]+)/([a-z0-9-]+)$")


def parse_gitops_folder(folder: str) -> tuple[str, str, str]:
    """(team, slug, env) of a folder mlferry owns; anything else is refused."""
    match = _FOLDER.match(folder)
    if not match or gitops_folder(*match.groups()) != folder:
        raise ValueError(f"{folder!r} is not a folder mlferry owns (teams/<team>/<slug>/<env>)")
    return match.group(1), match.group(2), match.group(3)


def folder_digest(files: Mapping[str, str]) -> str:
    """sha256 over the sorted file names and contents, each length-prefixed so that no two
    different folders hash the same bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name].encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.hexdigest()
