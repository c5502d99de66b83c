"""The FiftyOne App on an audited dataset: a saved view (flagged samples, most suspect first),
readable colours for the Eigen-CAM heatmap and the boxes, and our plugin (plugins/audit) registered
through FiftyOne's plugins directory setting."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import quote

from audit import names, settings
from audit.errors import AuditError
from audit.store import db

PLUGINS_DIR = settings.PACKAGE_DIR.parent / "plugins"
PLUGIN_NAME = "@audit/audit"

# Colours. The App colours by value: one colour per category everywhere (the category, `why` and
# review_end chips, the panel, the report: names.CATEGORY_COLOURS). The given label (and its
# ground-truth boxes) is always GIVEN_COLOUR and the prediction PREDICTION_COLOUR, whatever the class,
# so the two chips are told apart at a glance and keep their colours between page loads (the App
# hands out its pool's colours in the order it meets the values); the sidebar's checkboxes of the
# two fields show the same colours. Other labels take LABEL_COLOURS. The Eigen-CAM box is white.
GIVEN_COLOUR = "#1098ad"
PREDICTION_COLOUR = "#e67700"
LABEL_COLOURS = ("#17becf", "#bcbd22", "#ff7f0e", "#e377c2", "#ffbb78", "#9edae5", "#dbdb8d", "#f7b6d2",
                 "#c49c94", "#ffd92f", "#aec7e8", "#c7c7c7")
EIGENCAM_BOX_COLOUR = "#ffffff"
# The maps are off on the tiles, so the photo reads as it is: switched on in the sidebar, they are
# drawn in "jet" (red = strongest, like the report) at MAP_OPACITY, where the model saw the image.
HEATMAP_COLORSCALE = "jet"
MAP_OPACITY = 0.45
# `why` and review_end chips take their category's colour while there are at most this many distinct ones.
WHY_COLOURS_MAX = 5000
GRID_ZOOM = 8  # FiftyOne's default (7) makes tiles too small to judge a label by


class AppError(AuditError):
    """The App cannot be started; one line."""


def use_audit_plugin() -> str | None:
    """Point FiftyOne's plugins directory at plugins/ (the App's server process inherits it), unless
    the user set FIFTYONE_PLUGINS_DIR; returns a warning when the audit plugin will not be found."""
    user_dir = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if user_dir and Path(user_dir).resolve() != PLUGINS_DIR.resolve():
        if not any(p.read_text(errors="ignore").find(PLUGIN_NAME) >= 0
                   for p in Path(user_dir).glob("**/fiftyone.yml")):
            return (f"FIFTYONE_PLUGINS_DIR={user_dir} has no audit plugin: copy {PLUGINS_DIR / 'audit'} "
                    "there to get its operators (see docs/app.md)")
        return None
    if not (PLUGINS_DIR / "audit" / "fiftyone.yml").is_file():
        return f"the audit plugin is not at {PLUGINS_DIR / 'audit'}; the App opens without its operators"
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(PLUGINS_DIR)
    db.fo.config.plugins_dir = str(PLUGINS_DIR)
    return None


def apply_app_defaults(dataset) -> None:
    """Store App defaults on the dataset: the colours above, the audit's fields active and grouped
    at the top of the sidebar. Re-applying is harmless (the plugin does after an audit, for new
    `why` chips); the user's changes made in the App later are theirs."""
    fo = db.fo
    config = dataset.app_config
    label = db.label_field(dataset)
    present = set(dataset.get_field_schema())
    fields = [{"path": names.EIGENCAM_BOX, "valueColors": [{"value": "eigencam", "color": EIGENCAM_BOX_COLOUR}]}]
    classes = _label_values(dataset, [p for p in (label, names.PREDICTIONS, names.GT_BOXES) if p in present])
    fields += [{"path": path, "fieldColor": colour, "valueColors": [{"value": c, "color": colour} for c in classes]}
               for path, colour in ((label, GIVEN_COLOUR), (names.GT_BOXES, GIVEN_COLOUR),
                                    (names.PREDICTIONS, PREDICTION_COLOUR)) if path in present]
    if names.CATEGORY in present:
        fields.append({"path": names.CATEGORY, "valueColors": [{"value": category, "color": colour}
                                                               for category, colour in names.CATEGORY_COLOURS.items()]})
    for path in (names.WHY, names.REVIEW_END):
        if path in present:
            fields.append({"path": path, "valueColors": _category_colours(dataset, path)})
    config.color_scheme = fo.ColorScheme(
        color_by="value", color_pool=list(LABEL_COLOURS), opacity=MAP_OPACITY,
        colorscales=[{"path": path, "name": HEATMAP_COLORSCALE} for path in names.MAPS], fields=fields)
    # On the grid's tiles: the verdict and why, where a stage of the review queue ends, the given label,
    # the prediction and the boxes; no more. Tiles show them in the sidebar's order: the audit's
    # group, then the labels (so the sidebar's ground_truth and predictions say which colour is which).
    active = [p for p in (names.CATEGORY, names.WHY, names.REVIEW_END, label, names.PREDICTIONS, names.EIGENCAM_BOX,
                          names.GT_BOXES) if p in present]
    config.active_fields = fo.ActiveFields(paths=active)
    groups = fo.DatasetAppConfig.default_sidebar_groups(dataset)
    audit_paths = [p for p in (names.CATEGORY, names.WHY, names.SCORE, names.SUGGESTED, names.REASONS, names.EXPLAIN_NOTE,
                               names.RELABEL_TO, names.HISTORY, f"{label}_original", names.REVIEW_END) if p in present]
    for group in groups:
        group.paths = [p for p in group.paths if p not in audit_paths]
    labels = [group for group in groups if group.name == "labels"]
    groups = [group for group in groups if group.name != "labels"]
    groups[1:1] = [fo.SidebarGroupDocument(name="audit", paths=audit_paths, expanded=True), *labels]
    config.sidebar_groups = groups
    dataset.save()


def _label_values(dataset, paths: list[str]) -> list[str]:
    """Every class the given label, the prediction or a ground-truth box names, a relabel's too."""
    values = set()
    for path in paths:
        values.update(dataset.distinct(f"{path}.detections.label" if path == names.GT_BOXES else f"{path}.label"))
    if dataset.has_sample_field(names.RELABEL_TO):
        values.update(dataset.distinct(names.RELABEL_TO))
    return sorted(v for v in values if v)


def _category_colours(dataset, path: str) -> list[dict]:
    """Each distinct value of ``path`` (`why`, review_end) in its sample's category's colour (none past
    WHY_COLOURS_MAX: then the pool's)."""
    pairs = set(zip(*dataset.exists(path).values([path, names.CATEGORY])))
    if len(pairs) > WHY_COLOURS_MAX:
        return []
    return [{"value": why, "color": names.CATEGORY_COLOURS[category]} for why, category in sorted(pairs)
            if category in names.CATEGORY_COLOURS]


def choose_view(dataset, view: str | None):
    """The saved view to open: ``view`` (must exist), else the review view (the flagged samples,
    likely label errors first; re-synced when the dataset was scored but the view, its stages' ends or
    the explanations' notes are missing), else the whole dataset when nothing was scanned."""
    if view:
        if not dataset.has_saved_view(view):
            saved = ", ".join(dataset.list_saved_views()) or "none"
            raise AppError(f"no saved view '{view}' on '{dataset.name}' (saved views: {saved})")
        return view
    scored = dataset.has_sample_field(names.CATEGORY)
    synced = all(dataset.has_sample_field(path) for path in (names.REVIEW_END, names.EXPLAIN_NOTE))
    if scored and not (dataset.has_saved_view(names.REVIEW_VIEW) and synced):
        db.sync_flags(dataset)
    return names.REVIEW_VIEW if dataset.has_saved_view(names.REVIEW_VIEW) else None


def check_port(address: str, port: int) -> None:
    """Refuse a port something already listens on: FiftyOne would silently attach to another App."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as error:
            raise AppError(f"cannot serve on {address}:{port} ({error.strerror}); pick another --port") from None


def app_url(address: str, port: int, dataset_name: str, view: str | None) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
    host = f"[{host}]" if ":" in host else host
    url = f"http://{host}:{port}/datasets/{quote(dataset_name)}"
    return url + (f"?view={quote(slugify(view))}" if view else "")


def slugify(name: str) -> str:
    from fiftyone.core.utils import to_slug

    return to_slug(name)


def launch(dataset, view: str | None = None, port: int | None = None, address: str = settings.DEFAULT_APP_ADDRESS):
    """Start the App server on ``address:port`` with the dataset and the chosen saved view; returns
    (session, url, warnings). The caller waits (``serve``) or closes the session."""
    fo = db.fo
    warnings = [w for w in [use_audit_plugin()] if w]
    port = port or fo.config.default_app_port
    check_port(address, port)
    view_name = choose_view(dataset, view)
    apply_app_defaults(dataset)
    quiet = [logging.getLogger(n) for n in ("fiftyone", "fiftyone.core.session.session")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        config = fo.app_config.copy()
        if "FIFTYONE_APP_GRID_ZOOM" not in os.environ:
            config.grid_zoom = GRID_ZOOM
        session = fo.launch_app(dataset, view=dataset.load_saved_view(view_name) if view_name else None,
                                port=port, address=address, remote=True, auto=False, config=config)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    return session, app_url(address, port, dataset.name, view_name), warnings


def serve(session) -> None:
    """Block until Ctrl-C (or SIGTERM), then stop the App server."""
    previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        session.close()
        db.fo.close_app()


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt
