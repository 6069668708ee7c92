"""Every call hilt makes to Label Studio, through ``label-studio-sdk``, in one place.

Errors a user can fix (server down, wrong token, unknown project) become one-line
``UserError``s that say what to do; anything else keeps its traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from hilt.core.errors import UserError

URL_ENV = "LABEL_STUDIO_URL"
KEY_ENV = "LABEL_STUDIO_API_KEY"


class StudioClient:
    """A connection to one Label Studio server."""

    def __init__(self, url: str, api_key: str, timeout: float = 300.0):
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.sdk = LabelStudio(base_url=self.url, api_key=api_key, timeout=timeout)

    @contextlib.contextmanager
    def _calling(self, what: str, project: int | None = None) -> Iterator[None]:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            yield
        except httpx.TransportError as err:
            raise UserError(
                f"cannot reach Label Studio at {self.url} while trying to {what} ({type(err).__name__}); "
                f"start it with `hilt studio start` or set {URL_ENV}"
            ) from None
        except ApiError as err:
            if err.status_code == 401:
                raise UserError(
                    f"Label Studio at {self.url} rejected the API token (401) while trying to {what}; "
                    f"set {KEY_ENV} to your token (Account & Settings) or use `hilt studio start`'s"
                ) from None
            if err.status_code == 404 and project is not None:
                raise UserError(f"project {project} not found on {self.url}; check --project") from None
            if err.status_code == 400:
                detail = json.dumps(err.body)[:300] if err.body is not None else ""
                raise UserError(f"Label Studio refused to {what} (400): {detail}") from None
            raise

    def check(self) -> dict:
        """Who the token belongs to; fails fast on a wrong URL or token."""
        with self._calling("check the connection"):
            me = self.sdk.users.whoami()
        return {"id": me.id, "email": me.email, "username": me.username}

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        with self._calling(f"create project '{title}'"):
            project = self.sdk.projects.create(title=title, label_config=label_config, description=description)
        return project.id

    def label_config(self, project: int) -> str:
        with self._calling(f"read project {project}", project=project):
            return self.sdk.projects.get(project).label_config

    def project_title(self, project: int) -> str:
        with self._calling(f"read project {project}", project=project):
            return self.sdk.projects.get(project).title

    def import_tasks(self, project: int, tasks: Sequence[dict], batch_size: int = 500) -> list[int]:
        """Import tasks (with ``predictions`` inside, for drafts) in batches; returns task ids."""
        from tqdm.auto import tqdm

        ids: list[int] = []
        with tqdm(total=len(tasks), desc="importing tasks", unit="task") as bar:
            for start in range(0, len(tasks), batch_size):
                batch = list(tasks[start : start + batch_size])
                with self._calling(f"import tasks into project {project}", project=project):
                    response = self.sdk.projects.import_tasks(project, request=batch, return_task_ids=True)
                ids += list(response.task_ids or [])
                bar.update(len(batch))
        return ids

    def download_export(self, project: int, export_type: str = "JSON") -> bytes:
        """A project's export file as Label Studio writes it (``JSON``, ``JSON_MIN``, ``CSV``, ``TSV``...)."""
        with self._calling(f"export project {project} as {export_type}", project=project):
            return b"".join(self.sdk.projects.exports.download_sync(project, export_type=export_type,
                                                                    download_all_tasks=True))

    def export_formats(self, project: int) -> list[str]:
        """The names of the export formats Label Studio offers for a project (its labeling config decides
        which: the others are listed as disabled)."""
        with self._calling(f"list export formats of project {project}", project=project):
            formats = self.sdk.projects.exports.list_formats(project)
        return [f if isinstance(f, str) else f["name"] for f in formats
                if isinstance(f, str) or not f.get("disabled")]

    def export_tasks(self, project: int) -> list[dict]:
        """All tasks of a project in Label Studio's JSON export format."""
        return json.loads(self.download_export(project, "JSON"))

    def task_ids(self, project: int) -> list[int]:
        with self._calling(f"list tasks of project {project}", project=project):
            return sorted(task.id for task in self.sdk.tasks.list(project=project, fields="all"))

    def task_predictions(self, task: int) -> list[dict]:
        """The predictions (drafts) on a task: model_version, result, id."""
        with self._calling(f"read predictions of task {task}"):
            return [p.dict() for p in self.sdk.predictions.list(task=task)]

    def create_annotation(self, task: int, result: list[dict], completed_by: int | None = None,
                          ground_truth: bool = False, lead_time: float | None = None,
                          was_cancelled: bool = False, parent_prediction: int | None = None) -> int:
        """Post an annotation, as the UI does when an annotator submits (``parent_prediction``:
        the draft it was edited from)."""
        kwargs: dict[str, Any] = dict(result=result, ground_truth=ground_truth, was_cancelled=was_cancelled)
        if parent_prediction is not None:
            kwargs["parent_prediction"] = parent_prediction
        if completed_by is not None:
            kwargs["completed_by"] = completed_by
        if lead_time is not None:
            kwargs["lead_time"] = lead_time
        with self._calling(f"annotate task {task}"):
            return self.sdk.annotations.create(task, **kwargs).id

    def create_user(self, username: str, email: str) -> int:
        """A user to attribute stand-in annotations to (the admin posts for them)."""
        with self._calling(f"create user {email}"):
            return self.sdk.users.create(username=username, email=email).id

    def create_webhook(self, project: int, url: str, actions: Sequence[str], headers: dict[str, str]) -> int:
        """Register a webhook that sends the full payload for ``actions`` of one project."""
        with self._calling(f"register a webhook for project {project}", project):
            hook = self.sdk.webhooks.create(url=url, project=project, actions=list(actions), headers=headers,
                                            send_payload=True, send_for_all_actions=False, is_active=True)
        return hook.id

    def delete_webhook(self, webhook: int) -> None:
        with self._calling(f"delete webhook {webhook}"):
            self.sdk.webhooks.delete(webhook)

    def annotation_count(self, project: int) -> int:
        """Annotations in the project (submitted, including cancelled ones)."""
        with self._calling(f"read project {project}", project):
            return int(self.sdk.projects.get(project).total_annotations_number or 0)


def connect(url: str | None = None, api_key: str | None = None) -> StudioClient:
    """Connect to ``url``/``api_key``, else ``$LABEL_STUDIO_URL``/``$LABEL_STUDIO_API_KEY``,
    else the server ``hilt studio start`` runs; the connection is checked before returning.

    Raises:
        UserError: when no server is configured, reachable, or accepting the token.
    """
    from hilt.labeling.studio import read_state

    url = url or os.environ.get(URL_ENV)
    api_key = api_key or os.environ.get(KEY_ENV)
    if not url or not api_key:
        state = read_state()
        if state is None:
            raise UserError(
                f"no Label Studio configured: run `hilt studio start`, or set {URL_ENV} and {KEY_ENV}"
            )
        url, api_key = url or state["url"], api_key or state["token"]
    client = StudioClient(url, api_key)
    client.check()
    return client
