"""Temperature scaling (Guo et al. 2017): one number T fitted on the validation split so that softmax(logits / T)
is calibrated, and the expected calibration error on the eval split before and after.

T is fitted by minimising the validation negative log-likelihood over log T (bounded, scipy); it never changes
which class is predicted, only how confident the probabilities are. The eval split is only measured, never fitted.
"""

from __future__ import annotations

from typing import Any

from peftkit.runs.layout import CALIBRATION_FILE

BINS = 10


def negative_log_likelihood(logits, labels, temperature: float) -> float:
    import numpy as np

    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(scaled).sum(axis=1))
    return float((log_z - scaled[np.arange(len(labels)), labels]).mean())


def fit_temperature(logits, labels) -> float:
    import numpy as np
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def expected_calibration_error(logits, labels, temperature: float = 1.0, bins: int = BINS) -> float:
    """|accuracy - mean confidence| per equal-width confidence bin, weighted by the bin's share of rows (the
    report's reliability diagram bins the same way)."""
    import numpy as np

    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    probs = np.exp(scaled)
    probs /= probs.sum(axis=1, keepdims=True)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def temperature_report(validation_logits, validation_labels, eval_logits, eval_labels) -> dict[str, Any]:
    """metrics.json's ``calibration`` (and calibration.json): T, where it was fitted, ECE and NLL on eval before
    and after."""
    temperature = fit_temperature(validation_logits, validation_labels)
    return {
        "method": "temperature scaling",
        "temperature": round(temperature, 4),
        "fitted_on": f"validation split ({len(validation_labels)} rows)",
        "eval_ece_before": expected_calibration_error(eval_logits, eval_labels),
        "eval_ece_after": expected_calibration_error(eval_logits, eval_labels, temperature),
        "eval_nll_before": negative_log_likelihood(eval_logits, eval_labels, 1.0),
        "eval_nll_after": negative_log_likelihood(eval_logits, eval_labels, temperature),
        "applied_to": "generate and serve (their probabilities are softmax(scores / temperature)); "
                      "eval_predictions.jsonl and the report's reliability diagram hold the uncalibrated ones",
    }


def recheck(saved: dict[str, Any], logits, labels, data: str) -> dict[str, Any]:
    """A run's saved temperature measured again on other eval data (`peftkit evaluate`): ECE before and after."""
    temperature = float(saved["temperature"])
    return saved | {"eval_ece_before": expected_calibration_error(logits, labels),
                    "eval_ece_after": expected_calibration_error(logits, labels, temperature),
                    "eval_nll_before": negative_log_likelihood(logits, labels, 1.0),
                    "eval_nll_after": negative_log_likelihood(logits, labels, temperature),
                    "rechecked_on": data}


def saved_temperature(run_dir) -> float:
    """The temperature a run fitted on its validation split (calibration.json), 1.0 when it has none: the
    probabilities `generate` and `serve` return are divided by it before the softmax."""
    import json
    from pathlib import Path

    try:
        value = json.loads((Path(run_dir) / CALIBRATION_FILE).read_text(encoding="utf-8")).get("temperature")
    except (OSError, ValueError, AttributeError):
        return 1.0
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else 1.0
