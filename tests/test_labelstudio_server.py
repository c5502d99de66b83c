"""A real Label Studio round trip, following docs/relabelling.md's steps: export tasks, start Label Studio
with local files served from the printed document root, add the printed Local files storage, import
the tasks, fetch an image through the task's URL, annotate, export, `audit relabel --from`.

Label Studio is a large install, so this runs only when AUDIT_LABEL_STUDIO names its `label-studio`
program (`python -m venv /tmp/ls && /tmp/ls/bin/pip install label-studio`, then
`AUDIT_LABEL_STUDIO=/tmp/ls/bin/label-studio make test`); checked with Label Studio 1.23.2."""

import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import scan_sample
from typer.testing import CliRunner

from audit.cli import app
from audit.review.labelstudio import LABEL_STUDIO_CONFIG
from audit.store import db

LABEL_STUDIO = os.environ.get("AUDIT_LABEL_STUDIO")
pytestmark = pytest.mark.skipif(not LABEL_STUDIO, reason="AUDIT_LABEL_STUDIO names no label-studio program")
runner = CliRunner()
NAME = "labelstudio-sample"
TOKEN = "audit-round-trip-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LabelStudio:
    """Label Studio's REST API with the legacy token."""

    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}"

    def call(self, method: str, path: str, body=None, raw: bool = False):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            return payload if raw else json.loads(payload or b"null")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labelstudio")
    scan_sample(NAME)
    result = runner.invoke(app, ["export", NAME, "--out", str(folder / "tasks.json"), "--format", "labelstudio"])
    assert result.exit_code == 0, result.output
    said = next(line for line in result.stderr.splitlines() if line.startswith("Label Studio:"))
    root = said.split("LOCAL_FILES_DOCUMENT_ROOT=")[1].split(",")[0]
    storage = said.split("the absolute path ")[1].split(" (no sync)")[0]
    return folder, root, storage


@pytest.fixture(scope="module")
def server(exported):
    folder, root, _ = exported
    port = free_port()
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": root, "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_BASE_DATA_DIR": str(folder / "ls-data")}
    process = subprocess.Popen([LABEL_STUDIO, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port",
                                str(port), "--data-dir", str(folder / "ls-data"), "--username", "audit@example.com",
                                "--password", "audit-round-trip", "--user-token", TOKEN, "--enable-legacy-api-token"],
                               env=env, stdout=open(folder / "ls.log", "w"), stderr=subprocess.STDOUT)
    client = LabelStudio(port)
    deadline = time.monotonic() + 300
    while True:
        try:
            client.call("GET", "/api/projects/")
            break
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start; see {folder / 'ls.log'}")
            time.sleep(2)
    yield client
    process.terminate()
    process.wait(timeout=30)


def test_the_readme_steps_work_as_written(exported, server, tmp_path):
    folder, _, storage = exported
    project = server.call("POST", "/api/projects/", {"title": "audit", "label_config": LABEL_STUDIO_CONFIG})
    server.call("POST", "/api/storages/localfiles/", {"project": project["id"], "path": storage, "title": "images",
                                                      "use_blob_urls": False})  # refused if at the document root
    tasks = json.loads((folder / "tasks.json").read_text())
    server.call("POST", f"/api/projects/{project['id']}/import", tasks)
    listed = server.call("GET", f"/api/tasks/?project={project['id']}&page_size=100")
    listed = listed["tasks"] if isinstance(listed, dict) else listed
    assert len(listed) == len(tasks)
    camera = next(t for t in listed if t["data"]["filepath"].endswith("camera.jpg"))
    image = server.call("GET", camera["data"]["image"], raw=True)  # the labelling view's request
    assert image == Path(camera["data"]["filepath"]).read_bytes()

    server.call("POST", f"/api/tasks/{camera['id']}/annotations/", {"result": [
        {"from_name": "new_label", "to_name": "image", "type": "choices", "value": {"choices": ["tripod"]}}]})
    export = server.call("GET", f"/api/projects/{project['id']}/export?exportType=JSON", raw=True)
    (tmp_path / "export.json").write_bytes(export)
    applied = runner.invoke(app, ["relabel", NAME, "--from", str(tmp_path / "export.json")])
    assert applied.exit_code == 0, applied.output
    assert "changed camera.jpg: espresso -> tripod" in applied.stderr
    dataset = db.load_dataset(NAME)
    assert dataset.match(db.F("filepath").ends_with("/camera.jpg")).first().ground_truth.label == "tripod"
