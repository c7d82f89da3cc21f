"""The distillation loss, and the Trainer that uses it (a minimal ``compute_loss`` override).

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, hard label)

teacher_T is the teacher's distribution softened by the temperature: softmax(log p_teacher / T), which is what
softmax(teacher_logits / T) gives (the cache holds probabilities; their logs are the logits up to a constant per
row, which softmax ignores). The T^2 factor keeps the soft term's gradients on the scale of the hard term's
(Hinton et al. 2015). Rows without a hard label (label -100: unlabelled text the teacher labelled) only count in
the KL term; the cross-entropy is the mean over the labelled rows of the batch. Batches without teacher
probabilities (evaluation) get the plain cross-entropy.
"""

from __future__ import annotations

IGNORE = -100


def distillation_loss(logits, labels, teacher_probs, temperature: float, alpha: float):
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    hard = labels != IGNORE
    ce = F.cross_entropy(logits[hard], labels[hard]) if hard.any() else logits.sum() * 0.0
    if teacher_probs is None:
        return ce
    t = float(temperature)
    teacher_t = torch.softmax(torch.log(teacher_probs.float().clamp_min(1e-12)) / t, dim=-1)
    student_log_t = torch.log_softmax(logits / t, dim=-1)
    kl = F.kl_div(student_log_t, teacher_t, reduction="batchmean") * (t * t)
    return alpha * kl + (1.0 - alpha) * ce


class DistillationLoss:
    """Trainer mixin: the loss is `distillation_loss` with ``distill_temperature`` and ``distill_alpha``.

    The batch's ``teacher_probs`` column is taken out before the forward pass (the model does not know it), so
    the training arguments keep unused columns.
    """

    distill_temperature: float = 2.0
    distill_alpha: float = 0.5

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        teacher = inputs.pop("teacher_probs", None)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        loss = distillation_loss(logits, labels, teacher, self.distill_temperature, self.distill_alpha)
        return (loss, outputs) if return_outputs else loss
