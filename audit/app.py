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

from audit import db, names, settings
from audit.errors import AuditError

PLUGINS_DIR = settings.PACKAGE_DIR.parent / "plugins"
PLUGIN_NAME = "@audit/audit"

# Colours chosen to read over photos and apart from each other. Coloured by field, FiftyOne paints a
# heatmap in its field's colour with the opacity growing with the value: the Eigen-CAM map is a red
# glow where it is strongest, and the photo stays visible elsewhere. White (with FiftyOne's dark
# outline) for the Eigen-CAM box, green for ground-truth boxes, orange for the prediction. The other
# maps (off by default: switch them on in the sidebar) glow in the colour of what they explain:
# Grad-CAM of the prediction orange, of the given label teal (the label's colour), the second
# Eigen-CAM component magenta.
FIELD_COLOURS = {names.EIGENCAM: "#ff1a1a", names.EIGENCAM_BOX: "#ffffff", names.GT_BOXES: "#00dc00",
                 names.GROUND_TRUTH: "#1f9e89", names.PREDICTIONS: "#ff8c00", names.CATEGORY: "#d62728",
                 names.SCORE: "#8c2d04", names.EIGENCAM_PC2: "#ff00ff", names.GRADCAM_PRED: "#ff8c00",
                 names.GRADCAM_GIVEN: "#1f9e89"}
# Used when the user switches the App to colour by value: "jet" like the report, red = strongest.
HEATMAP_COLORSCALE = "jet"
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
                    "there to get its operators (see the README)")
        return None
    if not (PLUGINS_DIR / "audit" / "fiftyone.yml").is_file():
        return f"the audit plugin is not at {PLUGINS_DIR / 'audit'}; the App opens without its operators"
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(PLUGINS_DIR)
    db.fo.config.plugins_dir = str(PLUGINS_DIR)
    return None


def apply_app_defaults(dataset) -> None:
    """Store App defaults on the dataset: heatmap colours, box and label colours, the audit's fields
    active and grouped at the top of the sidebar. Re-applying is harmless; the user's changes made
    in the App later are theirs."""
    fo = db.fo
    config = dataset.app_config
    label = db.label_field(dataset)
    present = set(dataset.get_field_schema())
    config.color_scheme = fo.ColorScheme(
        color_by="field",
        opacity=0.55,
        colorscales=[{"path": path, "name": HEATMAP_COLORSCALE}
                     for path in (names.EIGENCAM, names.EIGENCAM_PC2, names.GRADCAM_PRED, names.GRADCAM_GIVEN)],
        fields=[{"path": path, "fieldColor": colour} for path, colour in
                {**FIELD_COLOURS, label: FIELD_COLOURS[names.GROUND_TRUTH]}.items() if path in present
                and path != names.CATEGORY]
        + ([{"path": names.CATEGORY, "fieldColor": FIELD_COLOURS[names.CATEGORY],
             "valueColors": [{"value": v, "color": c} for v, c in names.CATEGORY_COLOURS.items()]}]
           if names.CATEGORY in present else []),
    )
    # On the grid's tiles: the verdict, the score, the given label and the prediction; no more.
    active = [p for p in (names.CATEGORY, names.SCORE, label, names.PREDICTIONS, names.EIGENCAM, names.EIGENCAM_BOX, names.GT_BOXES)
              if p in present]
    config.active_fields = fo.ActiveFields(paths=active)
    groups = fo.DatasetAppConfig.default_sidebar_groups(dataset)
    audit_paths = [p for p in (names.CATEGORY, names.SCORE, names.SUGGESTED, names.REASONS, names.RELABEL_TO, names.HISTORY,
                               f"{label}_original") if p in present]
    for group in groups:
        group.paths = [p for p in group.paths if p not in audit_paths]
    groups.insert(1, fo.SidebarGroupDocument(name="audit", paths=audit_paths, expanded=True))
    config.sidebar_groups = groups
    dataset.save()


def choose_view(dataset, view: str | None):
    """The saved view to open: ``view`` (must exist), else the flagged view (re-synced when the
    dataset was scanned but the view is missing), else the whole dataset when nothing was scanned."""
    if view:
        if not dataset.has_saved_view(view):
            saved = ", ".join(dataset.list_saved_views()) or "none"
            raise AppError(f"no saved view '{view}' on '{dataset.name}' (saved views: {saved})")
        return view
    if not dataset.has_saved_view(names.FLAGGED_VIEW) and dataset.has_sample_field(names.CATEGORY):
        db.sync_flags(dataset)
    return names.FLAGGED_VIEW if dataset.has_saved_view(names.FLAGGED_VIEW) else None


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
