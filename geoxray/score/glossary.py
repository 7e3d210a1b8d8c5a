"""The report's glossary: what every column a report table shows means (one place; the
report lists the entries of the columns it shows). Definitions in full: docs/metrics.md."""
from __future__ import annotations

import pandas as pd

GLOSSARY: dict[str, str] = {
    "task": "the GeoX-Bench task, numbered as in the paper",
    "model": "the model (with [decode] when a table holds several decode modes)",
    "decode": "decode mode: paper (free text, JSON answer, the authors' regexes) or choice "
              "(answer constrained to the options; option probabilities where scored)",
    "instance": "the source dataset and zoom the items come from; `all` is the task total",
    "K": "number of answer options",
    "n": "items scored (valid or not)",
    "correct": "items whose parsed answer equals the gold",
    "invalid": "items without a parsed option (no answer field, not an option, engine or "
               "image error); counted as wrong",
    "failed": "items the engine failed on (errors, timeouts): counted apart, retried by a rerun",
    "accuracy": "correct / n (an invalid answer is wrong)",
    "ci_low": "lower end of the 95% CI of accuracy over locations (Wilson score with a "
              "cluster-robust CR2 effective sample size and a t quantile, G-1 df)",
    "ci_high": "upper end of that 95% CI",
    "95% CI": "95% confidence interval of accuracy over locations (see ci_low)",
    "chance": "1/K: the accuracy of guessing uniformly",
    "vs chance": "above / below: the 95% CI lies wholly above / below chance; ~: it covers it",
    "invalid %": "share of items without a valid answer, in percent",
    "n_valid": "items with a valid answer (counts) or usable option probabilities (expected)",
    "h_norm": "normalised entropy of the answer distribution: 0 always the same answer, "
              "1 every option equally often",
    "kl": "KL(answers || gold) in nats over the valid items; inf when an answered option "
          "is never gold",
    "kl_uniform": "KL(answers || uniform) = ln K (1 - h_norm)",
    "p_mode": "share of the most frequent answer (1/K .. 1): near 1 means one answer always",
    "mode_option": "the most frequent answer",
    "a_mode": "accuracy of always giving mode_option on these items",
    "invalid_rate": "(n - n_valid) / n",
    "source": "counts: from parsed answers; expected: from the mean option probabilities",
    "h_norm_low": "95% location-bootstrap CI of h_norm, lower end (percentile)",
    "h_norm_high": "95% location-bootstrap CI of h_norm, upper end",
    "kl_uniform_low": "95% location-bootstrap CI of kl_uniform, lower end",
    "kl_uniform_high": "95% location-bootstrap CI of kl_uniform, upper end",
    "p_mode_low": "95% location-bootstrap CI of p_mode, lower end (a max: biased upward when "
                  "options are near-tied)",
    "p_mode_high": "95% location-bootstrap CI of p_mode, upper end",
    "reason": "why an answer is invalid",
    "count": "number of items",
    "share": "count / items of the group",
    "task N": "accuracy on task N within the row's source instance",
    "n_base": "original items answered under every variant",
    "variants": "number of variants per item, the original included",
    "accuracy_identity": "accuracy on the original items",
    "circular_accuracy": "share of original items answered right on every variant",
    "flip_rate": "share of original items whose answers, mapped back through each variant's "
                 "geometry, disagree (an invalid answer counts as a flip)",
    "rstd": "standard deviation over options of the per-option recall (0: no option favoured)",
    "acc_*": "accuracy on one variant (identity, rot90/180/270, mirror, shift1/2/3)",
    "n_estimate": "items whose variants estimated the label prior (PriDe)",
    "accuracy_raw": "accuracy of the argmax of the option probabilities",
    "accuracy_debiased": "accuracy after dividing the option probabilities by the label prior "
                         "(PriDe)",
    "prior": "estimated prior over option labels (PriDe)",
    "prior_h_norm": "normalised entropy of that prior (1: no label preference)",
    "key": "manifest entry (dotted path)",
    "value": "its value",
}


def glossary_rows(columns: list[str]) -> pd.DataFrame:
    """(column, meaning) for `columns` in first-seen order; `task 3` and `acc_rot90` style
    columns share one entry."""
    seen = {}
    for c in columns:
        key = ("task N" if c.startswith("task ") and c[5:].isdigit()
               else "acc_*" if c.startswith("acc_") else c)
        if key in GLOSSARY:
            seen.setdefault(key, GLOSSARY[key])
    return pd.DataFrame(list(seen.items()), columns=["column", "meaning"])
