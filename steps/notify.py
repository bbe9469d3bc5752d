"""notify: tell people when a promotion's verification failed or an environment was rolled back.

One POST of Slack-compatible JSON (an incoming webhook's payload: `text`, the one line a
notification shows, and mrkdwn `section` blocks) to the URL in MLFERRY_NOTIFY_URL, an optional
key of the team's Secret (Bundle.secrets.notify). Any receiver that takes such JSON works.

A notification is a courtesy, never the outcome: a failed delivery is one warning line and the
step still succeeds, so it cannot fail or delay the run that reports the failure. The URL itself
is a credential (a Slack webhook URL lets anyone post to the channel): it is never logged, only
its host.
"""


import json
import logging
import os
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from hera.workflows import Input, Output

from mlferry.steps.outcome import as_argo_step, readable_failures

log = logging.getLogger(__name__)

URL_ENV = "MLFERRY_NOTIFY_URL"  # the Secret's key; empty: no notifications
ARGO_UI_ENV = "MLFERRY_ARGO_UI_URL"  # e.g. https://argo.example.com: the run gets a link
MAX_TEXT = 3000  # Slack's limit for a text object (a section's text)
MAX_FIELD = 2000  # and for one of a section's fields
NOTHING_RESTORED = "nothing restored"


def escape(text: str) -> str:
    """Text from the registry or a log as mrkdwn shows it literally: Slack reads `<…>` as links and
    mentions (`<!channel>` pings everyone), so `&`, `<` and `>` are escaped as its docs ask."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _link(url: str, label: str) -> str:
    return f"<{url}|{escape(label)}>" if url else escape(label)


def run_url(argo_ui: str, namespace: str, workflow: str) -> str:
    """The run in the Argo Workflows UI (`<ui>/workflows/<namespace>/<workflow>`), "" without a UI."""
    if not (argo_ui and namespace and workflow):
        return ""
    return f"{argo_ui.rstrip('/')}/workflows/{namespace}/{workflow}"


def commit_url(repo: str, sha: str) -> str:
    """The commit's page, `https://host/org/repo/commit/<sha>`, for an https GitOps repo; "" for any
    other (ssh, a path) or an unusual sha. Credentials in the URL never make it into the link."""
    parts = urlsplit(repo)
    if parts.scheme != "https" or not parts.hostname or not re.fullmatch(r"[0-9a-f]{7,64}", sha or ""):
        return ""
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    path = parts.path.rstrip("/").removesuffix(".git")
    return f"https://{host}{path}/commit/{sha}" if path.strip("/") else ""


def message(model: str, version: str, env: str, failed: str, restored: str = "", commit: str = "",
            workflow: str = "", namespace: str = "", argo_ui: str = "", gitops_repo: str = "") -> dict:
    """The notification: model, version and environment, what failed, what was restored (or
    that nothing was), and links to the run and the commit (the sha alone when there is no page)."""
    what = f"{model} v{version} in {env}" if version else f"{model} in {env}"
    headline = "failed" if failed else "rolled back" if restored else "needs a look"
    after = f"restored {restored}" if restored else NOTHING_RESTORED
    text = " ".join(f"mlferry: {what} {headline}{': ' + failed if failed else ''}; {after}".split())
    run = run_url(argo_ui, namespace, workflow)
    links = []
    if workflow or run:
        links.append(f"*Run*: {_link(run, workflow or run)}")
    if commit:
        page = commit_url(gitops_repo, commit)
        links.append(f"*Commit*: {_link(page, commit[:12] if page else commit)}")
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(
            f":rotating_light: *{escape(what)}* {headline}; {escape(after)}", MAX_TEXT)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": _cut(f"*{label}*\n{escape(value)}", MAX_FIELD)}
            for label, value in (("Model", model), ("Version", version or "?"), ("Environment", env),
                                 ("Restored", restored or NOTHING_RESTORED))]},
    ]
    if failed:
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": _cut(f"*What failed*\n{escape(failed)}", MAX_TEXT)}})
    if links:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "   ".join(links)}})
    return {"text": _cut(escape(text), MAX_TEXT), "blocks": blocks}


def send(url: str, payload: dict, timeout: float = 5.0) -> bool:
    """POST `payload` as JSON; True when the receiver accepted it (2xx). Never raises for a failed
    delivery: it logs one warning line that names the host at most, never the URL.

    The standard library's client, not requests: urllib3 logs each request line, path included, at
    DEBUG, and a Slack webhook URL's path is its secret."""
    host = urlsplit(url).hostname or "the notification URL"
    if urlsplit(url).scheme not in ("http", "https"):  # urllib would also open file: and ftp: URLs
        log.warning("notification not delivered: the notification URL is not http(s)")
        return False
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(1024)
            return True  # urlopen raises HTTPError for anything but 2xx (after redirects)
    except urllib.error.HTTPError as err:
        said = err.read(64).decode("utf-8", "replace").strip()
        # Slack answers a refusal with a short code (invalid_token, no_service, channel_not_found).
        code = f" ({said})" if re.fullmatch(r"[a-z_]{1,40}", said) else ""
        log.warning("notification not delivered to %s: HTTP %s%s", host, err.code, code)
    except (OSError, ValueError) as err:  # refused, timed out, TLS, DNS; a malformed URL
        # Not str(err): an error may quote the URL, whose path is the webhook's secret.
        reason = getattr(err, "reason", None)
        why = type(reason).__name__ if isinstance(reason, BaseException) else type(err).__name__
        log.warning("notification not delivered to %s: %s", host, why)
    return False


class NotifyInput(Input):
    model: str
    version: str = ""
    env: str
    status: str = ""  # the workflow's: {{workflow.status}}
    failures: str = ""  # Argo's {{workflow.failures}} (JSON), or one line saying what failed
    restored: str = ""  # e.g. "v2 (@production moved back)"; "": nothing restored
    commit: str = ""  # the GitOps commit the failed version was deployed in
    workflow: str = ""  # {{workflow.name}}
    namespace: str = ""  # {{workflow.namespace}}: where the run is in the Argo UI


class Notified(Output):
    delivered: bool = False


@as_argo_step
def notify(inputs: NotifyInput) -> Notified:
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        log.info("no notification is configured (%s is empty): not notifying", URL_ENV)
        return Notified()
    inputs = from_give_up(inputs)
    failed = readable_failures(inputs.failures) if inputs.failures else ""
    if not failed and inputs.status and inputs.status != "Succeeded":
        failed = f"the workflow ended {inputs.status}"
    payload = message(inputs.model, inputs.version, inputs.env, failed, inputs.restored, inputs.commit,
                      inputs.workflow, inputs.namespace, os.environ.get(ARGO_UI_ENV, ""),
                      _gitops_repo() if inputs.commit else "")  # the settings only for a commit to link
    delivered = send(url, payload)
    if delivered:
        log.info("notified %s: %s", urlsplit(url).hostname, payload["text"])
    return Notified(delivered=delivered)


def from_give_up(inputs: NotifyInput) -> NotifyInput:
    """The version, what failed and what was restored, from give-up's line when the run ended there
    (the exit handler has no other way to learn what the restore did)."""
    from mlferry.steps.outcome import failed_nodes, readable_failure
    from mlferry.steps.verify import GIVE_UP_STEP, parse_give_up

    for node in failed_nodes(inputs.failures) or []:
        said = node.get("templateName") == GIVE_UP_STEP and parse_give_up(readable_failure(node.get("message") or ""))
        if said:
            version, failed, restored = said
            return inputs.model_copy(update={"version": inputs.version or version, "failures": failed,
                                             "restored": inputs.restored or restored})
    return inputs


def _gitops_repo() -> str:
    """The GitOps repo of the settings, for the commit link; "" when they cannot be read (the
    notification goes out with the sha alone rather than not at all)."""
    from mlferry.steps.settings import SettingsError, load_settings

    try:
        return load_settings().gitops_repo
    except SettingsError as err:
        log.warning("no commit link: %s", err)
        return ""
