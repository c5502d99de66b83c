"""The names other tools and people rely on, in one place: the fields the audit writes, its tags,
saved views, categories and their colours, and the default model. Code, the plugin and the report
import them from here; none is spelled out anywhere else."""

from __future__ import annotations

# --- fields the scan and the scoring write on each sample ---------------------------------------
PREDICTIONS = "predictions"
EIGENCAM = "eigencam"
EIGENCAM_BOX = "eigencam_box"
EIGENCAM_PC2 = "eigencam_pc2"  # the second principal component (often a second object)
GRADCAM_PRED = "gradcam_pred"  # Grad-CAM of the predicted class
GRADCAM_GIVEN = "gradcam_given"  # Grad-CAM of the given label
MAPS = (EIGENCAM, EIGENCAM_PC2, GRADCAM_PRED, GRADCAM_GIVEN)
SIGNALS = "audit_signals"
SCORE = "mislabel_score"
CATEGORY = "category"
REASONS = "reasons"  # every reason, the decisive one first
WHY = "why"  # the decisive reason in a few words, shown on the App's tiles
SUGGESTED = "suggested_label"
ERROR = "audit_error"
DONE = "audit_done"  # the scan key of the settings the sample was scanned with; written with its fields, in one update
EMBEDDINGS = "embeddings"  # the explained layer average-pooled (a vector field: FiftyOne Brain, the App's plots)
HEAD_DONE = "audit_head_done"  # the key of the second phase (head, neighbours) the sample was judged in; written with its fields
GIVEN_PROBABILITIES = "given_probabilities"  # the user's predictions (--predictions), classes in info["audit"]
SIMILARITY_KEY = "audit_similarity"  # FiftyOne Brain's similarity index on the embeddings (sort by similarity)
VISUALIZATION_KEY = "audit_embeddings"  # FiftyOne Brain's 2-D map of the embeddings (the App's Embeddings panel)
REVIEW_END = "review_end"  # on the last sample of each category in the review order: "last of 1042 likely wrong labels"
EXPLAIN_NOTE = "explain_note"  # why the audit's saved views leave this sample's Eigen-CAM box (or maps) out

# --- fields the sources write ----------------------------------------------------------------------
GROUND_TRUTH = "ground_truth"
GT_BOXES = "gt_boxes"

# --- review: marks made in the App, corrections applied ----------------------------------------------
RELABEL_TAG = "relabel"  # marked in the App: the label is wrong (the corrected label in RELABEL_TO)
OK_TAG = "label_ok"  # marked in the App: the label was checked and is right
RELABELED_TAG = "relabeled"  # a corrected label was applied
RELABEL_TO = "relabel_to"
HISTORY = "relabel_history"
ORIGINAL_SUFFIX = "_original"  # <label field>_original keeps the label as it was before the first relabel

# --- categories, their tags, saved views and colours ------------------------------------------------
SUSPECTED_MISLABEL = "suspected_mislabel"
CLASSIFIER_FAILURE = "classifier_failure"
AMBIGUOUS = "ambiguous"
BAD_BOX = "bad_box"
OK = "ok"
ERROR_CATEGORY = "error"  # the sample could not be read
CATEGORIES = (SUSPECTED_MISLABEL, CLASSIFIER_FAILURE, AMBIGUOUS, BAD_BOX, OK, ERROR_CATEGORY)
FLAGGED_TAG = "audit-flagged"
FLAGGED_VIEW = "audit-flagged"  # highest mislabel_score first (as `audit rank` and `audit export`)
REVIEW_VIEW = "audit-review"  # in REVIEW_ORDER, each category highest mislabel_score first: the App opens on it
# The order a reviewer works in: likely label errors first, then what needs a look, then the model's failures.
REVIEW_ORDER = (SUSPECTED_MISLABEL, AMBIGUOUS, CLASSIFIER_FAILURE, BAD_BOX, ERROR_CATEGORY)
# Each category of the review order as the review queue names it.
REVIEW_STAGES = {SUSPECTED_MISLABEL: "likely wrong labels", AMBIGUOUS: "ambiguous", CLASSIFIER_FAILURE: "classifier failures",
                 BAD_BOX: "bad boxes", ERROR_CATEGORY: "unreadable"}
# A tag and a saved view of the same name per flagged category.
CATEGORY_VIEWS = {SUSPECTED_MISLABEL: "audit-mislabels", CLASSIFIER_FAILURE: "audit-failures",
                  AMBIGUOUS: "audit-ambiguous", BAD_BOX: "audit-bad-boxes"}
# The verdict's colour on the App's tiles, in its panel and in the report.
CATEGORY_COLOURS = {SUSPECTED_MISLABEL: "#d62728", CLASSIFIER_FAILURE: "#1f77b4", AMBIGUOUS: "#9467bd",
                    BAD_BOX: "#8c564b", OK: "#2ca02c", ERROR_CATEGORY: "#7f7f7f"}

# --- defaults ----------------------------------------------------------------------------------------
DEFAULT_MODEL = "efficientnet_lite0"
