"""A review as a reviewer works it, in Chromium: `audit app` on a scan of 2,000 CIFAR-10 training
photos (32x32, human label noise; ../shared/data/cifar10n-dev) with the Audit summary panel open
beside the grid. The review view shows where the likely wrong labels end and the panel counts the
marks against them; every tile's `why` keeps its class name at the grid's narrowest tile; the given
label and the prediction keep a colour each across page loads; the modal says why the Eigen-CAM box
is left out of a 32x32 photo.

AUDIT_CIFAR_ROWS=5000 scans the whole of cifar10n-dev (the docs' screenshots, with
AUDIT_UPDATE_DOCS=1). Skipped where Chromium, playwright or ../shared/data is missing."""

import csv
import os
from pathlib import Path

import pytest
from conftest import REPO
from test_browser import CHROMIUM, AppProcess, free_port, keep, open_modal, open_operator, playwright_api
from typer.testing import CliRunner

from audit import names
from audit.cli import app
from audit.review import app as review_app
from audit.store import db

CIFAR = REPO.parent / "shared" / "data" / "cifar10n-dev"
ROWS = int(os.environ.get("AUDIT_CIFAR_ROWS", "2000"))
NAME = "browser-cifar"
LABEL_OK = "Audit: mark selected as label_ok (label is right)"

pytestmark = [pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed"),
              pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/data/cifar10n-dev is absent")]
sync_playwright = playwright_api.sync_playwright


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The first ROWS photos of cifar10n-dev, scanned as a user would (`audit scan csv`)."""
    with open(CIFAR / "labels.csv") as handle:
        rows = list(csv.DictReader(handle))[:ROWS]
    labels = tmp_path_factory.mktemp("cifar") / "labels.csv"
    with open(labels, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filepath", "label"])
        writer.writerows([str(CIFAR / row["filepath"]), row["label"]] for row in rows)
    # Without the second opinions and the class maps (the App shows the verdicts, whatever they are):
    # a few minutes on two cores.
    result = CliRunner().invoke(app, ["scan", "csv", "--root", str(labels), "--name", NAME, "--no-second-opinion",
                                      "--no-class-maps"])
    assert result.exit_code == 0, result.output
    return db.load_dataset(NAME)


@pytest.fixture(scope="module")
def page():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox",
                                                                              "--disable-gpu"])
        context = chromium.new_context(viewport={"width": 1400, "height": 900})
        context.add_init_script("window.localStorage.setItem('fiftyone-enterprise-tooltip-seen', 'true')")
        yield context.new_page()
        chromium.close()


def rgb(hex_colour: str) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


# Each visible tile, in grid order: its width, its chips' texts and colours, and for its `why` chip
# the width of the text up to the end of its first quoted class name against the chip's own width.
TILES_JS = """grid => [...grid.querySelectorAll('[data-cy=looker]')].map(tile => {
  const box = tile.getBoundingClientRect();
  const chip = path => tile.querySelector(`[data-cy=tag-${path}]`);
  const colour = path => chip(path) && getComputedStyle(chip(path)).backgroundColor;
  const why = chip('why');
  let decisive = null;
  if (why) {
    const style = getComputedStyle(why), text = why.textContent;
    const end = text.indexOf("'", text.indexOf("'") + 1) + 1;
    const context = document.createElement('canvas').getContext('2d');
    context.font = style.font;
    decisive = {text: text.slice(0, end), needs: context.measureText(text.slice(0, end)).width,
                has: why.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight)};
  }
  return {x: box.x, y: box.y, width: box.width, text: tile.innerText, decisive,
          category: chip('category') && chip('category').textContent, end: chip('review_end') && chip('review_end').textContent,
          given: colour('ground_truth'), predicted: colour('predictions')};
}).filter(t => t.width > 0 && t.y > 0 && t.y < window.innerHeight).sort((a, b) => a.y - b.y || a.x - b.x)"""


def visible_tiles(page) -> list[dict]:
    return page.locator("[data-cy=fo-grid]").evaluate(TILES_JS)


def test_a_review_of_two_thousand_photos_with_the_panel_open(dataset, page, tmp_path):
    review = db.review_view(dataset)
    categories = review.values(names.CATEGORY)
    mislabels = categories.count(names.SUSPECTED_MISLABEL)
    assert mislabels and categories[:mislabels] == [names.SUSPECTED_MISLABEL] * mislabels  # likely wrong labels first
    boundary = f"last of {mislabels} likely wrong labels"
    assert review.values(names.REVIEW_END)[mislabels - 1] == boundary
    # 32x32 photos: the saved views leave the box and the maps out, and each sample says why.
    saved = dataset.load_saved_view(names.REVIEW_VIEW)
    notes, boxes, maps = saved.values([names.EXPLAIN_NOTE, f"{names.EIGENCAM_BOX}.detections", names.EIGENCAM])
    assert all(note.startswith("too small for box and maps (32x32; the box spans") for note in notes)
    assert not any(boxes) and not any(maps) and all(dataset.values(names.EIGENCAM))
    server = AppProcess(NAME, "--port", str(free_port()))
    try:
        page.goto(server.wait_for("App: ").split("App: ", 1)[1].strip())
        page.locator("[data-cy=looker]").first.wait_for(timeout=120_000)
        page.locator("[data-cy=new-panel-btn]").first.click()
        page.get_by_text("Audit summary", exact=True).first.click()
        progress = page.get_by_text(f"0 of {mislabels:,} likely wrong labels reviewed", exact=True)
        progress.wait_for(timeout=90_000)
        page.wait_for_timeout(3000)  # let the tiles settle at the grid's width beside the panel

        # Every tile, the narrowest included, keeps the decisive words of its `why`: the class name.
        tiles = visible_tiles(page)
        assert len(tiles) >= 8 and all(t["category"] == names.SUSPECTED_MISLABEL for t in tiles)
        narrowest = min(tiles, key=lambda t: t["width"])
        assert narrowest["width"] < 200, narrowest  # the panel shares the width: small tiles
        for tile in tiles:
            decisive = tile["decisive"]
            assert decisive["text"].startswith("'") and decisive["needs"] <= decisive["has"] + 0.5, tile
        # The given label and the prediction in a colour each, on every tile.
        assert {(t["given"], t["predicted"]) for t in tiles} == {
            (rgb(review_app.GIVEN_COLOUR), rgb(review_app.PREDICTION_COLOUR))}
        page.screenshot(path=tmp_path / "app-cifar-panel.png")
        keep(tmp_path / "app-cifar-panel.png")

        # A mark made in the modal counts against the likely wrong labels at once.
        open_modal(page, page.locator("[data-cy=looker]").first)
        modal = page.locator("[data-cy=modal]")
        modal.get_by_text("too small for box and maps (32x32", exact=False).first.wait_for(timeout=30_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=tmp_path / "app-cifar-modal.png")
        keep(tmp_path / "app-cifar-modal.png")
        open_operator(page, LABEL_OK, "label_ok?")
        page.get_by_role("button", name="Execute").click()
        for _ in range(10):  # the form closes, then the modal
            if not modal.count():
                break
            page.keyboard.press("Escape")
            page.wait_for_timeout(1000)
        page.get_by_text(f"1 of {mislabels:,} likely wrong labels reviewed (label_ok 1)", exact=True).wait_for(
            timeout=60_000)

        # Scrolled to where the likely wrong labels end: the boundary tile, red before, none after.
        grid = page.locator("[data-cy=fo-grid]")
        end = page.locator("[data-cy=fo-grid] [data-cy=tag-review_end]").filter(has_text=boundary)
        for _ in range(400):
            if end.count() and end.first.is_visible():
                break
            grid.hover()
            page.mouse.wheel(0, 300)
            page.wait_for_timeout(150)
        grid.hover()
        page.mouse.wheel(0, 300)  # it came into view at the bottom: a row further, so that tiles after it show too
        page.wait_for_timeout(500)
        end.first.scroll_into_view_if_needed()
        page.wait_for_timeout(2000)
        tiles = visible_tiles(page)
        at = next(i for i, t in enumerate(tiles) if t["end"] == boundary)
        assert tiles[at]["category"] == names.SUSPECTED_MISLABEL
        assert {t["category"] for t in tiles[:at]} <= {names.SUSPECTED_MISLABEL}
        after = [t["category"] for t in tiles[at + 1:]]
        assert after and names.SUSPECTED_MISLABEL not in after, tiles
        page.screenshot(path=tmp_path / "app-cifar-boundary.png")
        keep(tmp_path / "app-cifar-boundary.png")

        # Loaded again, the two labels keep their colours.
        page.reload()
        page.locator("[data-cy=looker]").first.wait_for(timeout=120_000)
        page.wait_for_timeout(3000)
        assert {(t["given"], t["predicted"]) for t in visible_tiles(page)} == {
            (rgb(review_app.GIVEN_COLOUR), rgb(review_app.PREDICTION_COLOUR))}
    finally:
        status = server.stop()
    assert status == 0, "".join(server.output)
