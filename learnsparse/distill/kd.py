"""`distill=kd`: knowledge distillation (Hinton et al., 2015) as a loss-term hook.

    total = (1 − alpha) · loss_ce + loss_kd,   loss_kd = alpha · T² · KL(p_teacher ‖ p_student)

with p = softmax(logits / T). T² keeps the gradient's scale independent of the temperature.
The hook reads the step's images and the student's logits from the trainer (`trainer.batch`,
`trainer.outputs`), so it needs no forward hook on the model. The teacher runs in eval mode
under no_grad, on the trainer's device and memory format, inside the step's autocast. It is
not part of the model: it is never trained, never in a checkpoint, and a resumed run gets it
back from where it came (learnsparse.engine.teacher), so the resumed run is bit-exact.
Under DDP every rank runs its own copy of the teacher on its own shard of the batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from learnsparse.core.errors import UserError, first_line
from learnsparse.core.hook_base import HookBase


class KnowledgeDistillation(HookBase):
    def __init__(self, model: nn.Module, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9):
        if not isinstance(teacher, nn.Module):
            raise ValueError(f"the teacher must be a model, got {type(teacher).__name__}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    @property
    def loss_names(self) -> tuple[str, ...]:
        return ("loss_kd",)

    def before_train(self) -> None:
        t = self.trainer
        self.teacher.to(t.device, memory_format=t.memory_format).eval()
        t.ce_weight = 1.0 - self.alpha

    def extra_losses(self) -> dict[str, torch.Tensor]:
        images, _ = self.trainer.batch
        student = self.trainer.outputs
        with torch.no_grad():
            try:
                teacher = self.teacher(images)
            except Exception as e:  # a teacher that does not take this run's images
                raise UserError(f"distill: the teacher fails on this run's images "
                                f"{list(images.shape)} ({first_line(e)})") from e
        if teacher.shape != student.shape:
            raise UserError(f"distill: the teacher's outputs are {list(teacher.shape)}, the model's "
                            f"{list(student.shape)}; they must be logits over the same classes")
        return {"loss_kd": self.alpha * self.temperature ** 2 * kd_divergence(student, teacher, self.temperature)}


def kd_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher / T) ‖ softmax(student / T)), the batch mean, computed in float32."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
