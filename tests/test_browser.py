"""End to end in a real browser: `audit app` on the scanned sample photos, opened in Debian's
headless Chromium driven by Playwright (never a browser Playwright downloads), and the HTML report.

Screenshots go to the test's tmp dir; with AUDIT_UPDATE_DOCS=1 they are also copied to docs/ for
the docs pages. Skipped when /usr/bin/chromium or the playwright package is missing (`make test`
installs both when it can)."""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, scan_sample
from synthetic_images import OWN_LABELS, own_classes_folder, own_labels_csv
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.store import db

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
NAME = "browser-sample"
OPERATORS = ("Audit: run the audit on this view or selection", "Audit: mark selected as relabel (label is wrong)",
             "Audit: mark selected as label_ok (label is right)", "Audit: apply the relabel marks",
             "Audit: export the relabel list of this view")

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
playwright_api = pytest.importorskip("playwright.sync_api")
sync_playwright, expect = playwright_api.sync_playwright, playwright_api.expect
runner = CliRunner()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


DOC_SHOTS = ("app-grid.png", "app-modal.png", "app-panel.png", "app-two-objects.png", "report.png", "app-cifar-panel.png",
             "app-cifar-modal.png", "app-cifar-boundary.png")  # shown in docs/app.md


def keep(screenshot: Path) -> None:
    if os.environ.get("AUDIT_UPDATE_DOCS") and screenshot.name in DOC_SHOTS:
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copy(screenshot, REPO / "docs" / screenshot.name)


@pytest.fixture(scope="module")
def dataset():
    return scan_sample(NAME)


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def new_page(browser, width=1400, height=900):
    context = browser.new_context(viewport={"width": width, "height": height})
    # FiftyOne's one-off "Enterprise" pop-over would cover the grid in every screenshot.
    context.add_init_script("window.localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true')")
    return context.new_page()


def dataset_suggestions(name: str) -> list[str]:
    return [s for s in db.load_dataset(name).values("suggested_label") if s]


def open_modal(page, tile) -> None:
    """Open ``tile``'s sample in the modal (clicked again if the grid was still laying out)."""
    for _ in range(3):
        tile.click()
        try:
            page.locator("[data-cy=modal]").wait_for(timeout=20_000)
            page.locator("[data-cy=modal]").get_by_text("suggested_label", exact=True).wait_for(timeout=30_000)
            return
        except playwright_api.TimeoutError:
            page.wait_for_timeout(2000)
    raise AssertionError("the sample's modal did not open")


def open_operator(page, label: str, shows: str, attempts: int = 3) -> None:
    """Open the operator ``label`` from the operator browser until its form shows the text ``shows``
    (on a busy machine the form can resolve before the App has told the server which sample the
    modal shows)."""
    for attempt in range(attempts):
        page.keyboard.press("`")
        item = page.get_by_text(label, exact=True)
        item.wait_for(timeout=30_000)  # the browser lists every operator; typed keys could reach the modal
        item.click(timeout=30_000)
        try:
            page.get_by_text(shows).wait_for(timeout=20_000)
            return
        except playwright_api.TimeoutError:
            if attempt == attempts - 1:
                raise
            cancel = page.get_by_role("button", name="Cancel")
            if cancel.count():
                cancel.first.click()  # closes the form, not the modal under it
            page.wait_for_timeout(2000)


class AppProcess:
    """`audit app` in a subprocess (its own process group), its output read line by line."""

    def __init__(self, *args: str):
        audit = str(Path(sys.executable).parent / "audit")
        self.process = subprocess.Popen([audit, "app", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, env=os.environ.copy(), start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        self.output: list[str] = []
        for stream in (self.process.stdout, self.process.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, prefix: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                assert self.process.poll() is None, f"audit app exited: {''.join(self.output)}"
                continue
            self.output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r} in {timeout} s: {''.join(self.output)}")

    def stop(self) -> int:
        """Ctrl-C, as a user would; then whatever it takes."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def test_app_lists_the_flagged_samples_and_offers_the_operators(dataset, browser, tmp_path):
    flagged = db.review_view(dataset)
    top = flagged.first()  # the likeliest label error opens first: one of the deliberately wrong ones
    assert top.category == "suspected_mislabel" and top.suggested_label in ("tripod", "espresso", "space shuttle")
    port = free_port()
    server = AppProcess(NAME, "--port", str(port))
    try:
        url = server.wait_for("App: ").split("App: ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}/datasets/{NAME}?view=audit-review"
        page = new_page(browser)
        page.goto(url)

        # The flagged samples, and only they, are listed, most suspect first.
        page.get_by_text(f"{len(flagged)} samples", exact=True).wait_for(timeout=90_000)
        page.locator("[data-cy=looker]").nth(len(flagged) - 1).wait_for(timeout=30_000)
        page.wait_for_timeout(2500)  # let the tiles paint their heatmaps
        grid_text = page.locator("[data-cy=fo-grid]").inner_text()
        assert grid_text.count("suspected_mislabel") == len(db.flagged_view(dataset, "suspected_mislabel"))
        for label in ("goldfish", "espresso", "tripod"):  # the deliberately wrong labels
            assert label in grid_text
        # Likely label errors first, and each flagged tile says why in a few words, in its category's colour.
        categories = [t.inner_text() for t in page.locator("[data-cy=fo-grid] [data-cy=tag-category]").all()]
        order = [names.REVIEW_ORDER.index(c) for c in categories]
        assert len(order) == len(flagged) and order == sorted(order), categories
        for why in flagged.values("why"):
            assert why in grid_text
        why_chip = page.locator("[data-cy=fo-grid] [data-cy=tag-why]").first
        assert why_chip.inner_text() == top.why == f"'{top.ground_truth.label}'? no evidence"
        category_colour = page.locator("[data-cy=fo-grid] [data-cy=tag-category]").first.evaluate(
            "chip => getComputedStyle(chip).backgroundColor")
        assert category_colour == why_chip.evaluate("chip => getComputedStyle(chip).backgroundColor") == "rgb(214, 39, 40)"
        page.screenshot(path=tmp_path / "app-grid.png")
        keep(tmp_path / "app-grid.png")

        # The plugin's operators are registered and listed.
        page.keyboard.press("`")
        page.keyboard.type("audit")
        for label in OPERATORS:
            page.get_by_text(label, exact=True).wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "app-operators.png")
        keep(tmp_path / "app-operators.png")
        page.keyboard.press("Escape")

        # Mark the most suspect sample from its modal: the form offers our suggestion.
        open_modal(page, page.locator("[data-cy=looker]").first)
        page.wait_for_timeout(2500)
        page.screenshot(path=tmp_path / "app-modal.png")
        keep(tmp_path / "app-modal.png")
        open_operator(page, OPERATORS[1], "Corrected label")
        assert page.locator(f"input[value='{top.suggested_label}']").count() == 1
        expect(page.get_by_role("button", name="Execute")).to_be_enabled(timeout=30_000)
        page.screenshot(path=tmp_path / "app-mark-relabel.png")
        keep(tmp_path / "app-mark-relabel.png")
        page.get_by_role("button", name="Execute").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "relabel" not in dataset.select(top.id).values("tags")[0]:
            time.sleep(0.5)
        dataset.reload()  # the App's server added the field relabel_to
        tags, relabel_to = dataset.select(top.id).values(["tags", "relabel_to"])
        assert "relabel" in tags[0] and relabel_to[0] == top.suggested_label
        page.keyboard.press("Escape")

        # The summary panel: counts per category and the score distribution of what the grid shows.
        page.locator("[data-cy=new-panel-btn]").first.click()
        page.get_by_text("Audit summary", exact=True).first.click()
        page.get_by_text("samples per category").wait_for(timeout=60_000)
        page.get_by_text(f"{len(flagged)} samples in this view: {len(flagged)} flagged").wait_for(timeout=30_000)
        # Filtered in the sidebar to one category, the grid and the panel count the same samples.
        mislabels = len(db.flagged_view(dataset, "suspected_mislabel"))
        page.locator("[data-cy=sidebar-field-arrow-enabled-category]").click()
        checkbox = page.locator("[data-cy=checkbox-suspected_mislabel]")
        checkbox.wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        checkbox.click()
        # The sample photos' queue is their three wrong labels: where nothing else is flagged, the filter
        # keeps every tile and the grid shows no "N of M".
        narrowed = f"{mislabels} of {len(flagged)} samples" if mislabels < len(flagged) else None
        if narrowed:
            page.get_by_text(narrowed).wait_for(timeout=30_000)
        page.get_by_text(f"{mislabels} samples in this view: {mislabels} flagged").wait_for(timeout=30_000)
        page.wait_for_timeout(1500)
        if narrowed:
            assert page.get_by_text(narrowed).count() == 1  # the filter holds
        page.screenshot(path=tmp_path / "app-panel.png")
        keep(tmp_path / "app-panel.png")
    finally:
        status = server.stop()
    assert status == 0, "".join(server.output)
    deadline = time.monotonic() + 30
    while True:  # the App's server is gone with it
        try:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener not
                probe.bind(("127.0.0.1", port))
                probe.listen()
            break
        except OSError:
            assert time.monotonic() < deadline, f"port {port} still in use after `audit app` stopped"
            time.sleep(1)


def test_two_objects_with_the_label_true_for_one_are_ambiguous_and_offered_only_the_dataset_s_labels(browser, tmp_path):
    """The golden retriever with a tennis ball on its head, in a dataset of dog breeds: here the cup
    beside the man with his tripod, labelled 'espresso' in a dataset without 'tripod'."""
    result = runner.invoke(app, ["scan", "csv", "--root", str(own_labels_csv(tmp_path)), "--name", "browser-own",
                                 "--workers", "0"])
    assert result.exit_code == 0, result.output
    both = db.load_dataset("browser-own").match(db.F("filepath").ends_with("cup_and_camera.jpg")).first()
    assert both.category == "ambiguous" and both.suggested_label in OWN_LABELS | {None}
    server = AppProcess("browser-own", "--port", str(free_port()))
    try:
        page = new_page(browser)
        page.goto(server.wait_for("App: ").split("App: ", 1)[1].strip())
        tile = page.locator("[data-cy=looker]").filter(has_text=both.why)
        tile.wait_for(timeout=90_000)
        assert "suspected_mislabel" not in tile.inner_text() and "ambiguous" in tile.inner_text()
        page.wait_for_timeout(2500)  # let the tiles paint
        page.screenshot(path=tmp_path / "app-two-objects.png")
        keep(tmp_path / "app-two-objects.png")
        grid_text = page.locator("[data-cy=fo-grid]").inner_text()
        assert "tripod" not in dataset_suggestions("browser-own") and set(dataset_suggestions("browser-own")) <= OWN_LABELS
        assert grid_text.count("suspected_mislabel") == 1  # only the camera photo labelled 'espresso'
    finally:
        status = server.stop()
    assert status == 0, "".join(server.output)


def test_the_embeddings_panel_plots_every_sample_coloured_by_category(browser, tmp_path):
    """A folder in classes of its own: the App's Embeddings panel offers the scan's 2-D map of the
    embeddings, plots every sample, and colours them by category (the planted error among them)."""
    folder, _planted = own_classes_folder(tmp_path / "own-classes")
    result = runner.invoke(app, ["scan", "folder", "--root", str(folder), "--name", "browser-embeddings",
                                 "--workers", "0", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    dataset = db.load_dataset("browser-embeddings")
    counts = dataset.count_values(names.CATEGORY)
    server = AppProcess("browser-embeddings", "--port", str(free_port()))
    try:
        page = new_page(browser)
        page.goto(server.wait_for("App: ").split("App: ", 1)[1].strip())
        page.locator("[data-cy=looker]").first.wait_for(timeout=90_000)
        page.locator("[data-cy=new-panel-btn]").first.click()
        page.get_by_text("Embeddings", exact=True).first.click()
        page.get_by_text(names.VISUALIZATION_KEY, exact=True).click(timeout=60_000)
        page.get_by_text(f"{len(dataset)} points", exact=False).wait_for(timeout=60_000)
        page.get_by_text("Color by", exact=False).first.click()
        page.get_by_role("option", name=names.CATEGORY, exact=True).click()
        legend = page.get_by_text(names.SUSPECTED_MISLABEL, exact=True)
        legend.last.wait_for(timeout=30_000)
        assert counts[names.SUSPECTED_MISLABEL] >= 1
        page.wait_for_timeout(2000)  # let the plot paint its colours
        page.screenshot(path=tmp_path / "app-embeddings-own-classes.png")
    finally:
        status = server.stop()
    assert status == 0, "".join(server.output)


def test_app_refuses_a_busy_port_and_an_unknown_view(dataset):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = runner.invoke(app, ["app", NAME, "--port", str(port)])
        assert result.exit_code == 1 and f"cannot serve on 127.0.0.1:{port}" in result.stderr
    result = runner.invoke(app, ["app", NAME, "--view", "no-such-view", "--port", str(free_port())])
    assert result.exit_code == 1 and "no saved view 'no-such-view'" in result.stderr


def test_the_report_opens_in_the_browser(dataset, browser, tmp_path):
    report = tmp_path / "report.html"
    result = runner.invoke(app, ["report", NAME, "--out", str(report)])
    assert result.exit_code == 0, result.output
    page = new_page(browser, 1280, 1000)
    requests = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri())
    page.get_by_text(f"Top {len(db.flagged_view(dataset))} flagged samples, most suspect first").wait_for()
    assert page.locator("section.card").count() == len(db.flagged_view(dataset))
    flagged = db.flagged_view(dataset)
    labels, predictions = flagged.values(["ground_truth.label", "predictions.label"])
    disagreeing = sum(label != predicted for label, predicted in zip(labels, predictions))
    # the photo, the photo with Eigen-CAM and box, and where the given label's evidence is when the model disagrees
    assert page.locator("section.card img").count() == 2 * len(flagged) + disagreeing
    assert all(page.locator("section.card img").evaluate_all("imgs => imgs.map(i => i.naturalWidth > 0)"))
    assert page.locator("svg rect").count() > 0  # the histogram
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # self-contained
    page.screenshot(path=tmp_path / "report.png")
    keep(tmp_path / "report.png")
