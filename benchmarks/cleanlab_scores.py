"""cleanlab's own scores for benchmarks/any_labels.py, run in cleanlab's environment (not audit's):

    CLEANLAB_PYTHON benchmarks/cleanlab_scores.py IN.npz OUT.npz

IN holds ``labels`` (N,) int, ``pred_probs`` (N, K) out-of-fold probabilities and ``features``
(N, D). OUT gets, each higher = more suspect: ``normalized_margin`` and ``self_confidence`` (1 -
cleanlab's label quality scores), ``find_label_issues`` (1 for the issues cleanlab finds, ranked
by normalized margin inside, 0 elsewhere) and, when Datalab imports, ``datalab`` (1 - its label score).
"""

import sys

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

data = np.load(sys.argv[1])
labels, pred_probs = data["labels"], data["pred_probs"]
scores = {method: 1.0 - get_label_quality_scores(labels, pred_probs, method=method)
          for method in ("normalized_margin", "self_confidence")}
ranked = find_label_issues(labels, pred_probs, return_indices_ranked_by="normalized_margin")
found = np.zeros(len(labels))
found[ranked] = 1.0 + np.linspace(1.0, 0.0, len(ranked), endpoint=False)  # issues first, in cleanlab's order
scores["find_label_issues"] = found
try:
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(pred_probs=pred_probs, features=data["features"], issue_types={"label": {}})
    scores["datalab"] = 1.0 - lab.get_issues("label")["label_score"].to_numpy()
except ImportError:
    pass
np.savez(sys.argv[2], **scores)
