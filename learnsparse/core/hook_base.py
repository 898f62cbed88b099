"""The hook contract. The trainer runs, in this order:

    hook.before_train()
    for epoch in range(start_epoch, epochs):
        hook.before_epoch()
        for batch in train_loader:
            hook.before_step()          # trainer.progress is already updated: keep this cheap
            losses = {"loss_ce": ...} | hook.extra_losses() for every hook that has terms
            total.backward()
            hook.after_backward()       # gradients exist, optimizer has not stepped yet
            optimizer.step(); lr_scheduler.step()
            hook.after_step()
        hook.after_epoch()              # trainer.epoch_metrics collects what hooks measured
    hook.after_train()

    hook.on_model_changed(mapping)      # whenever the model changes (a swap, a shrink: any
                                        # Trainer.replace_modules), at the point that changed it

A hook holds a weak reference to its trainer (`self.trainer`) so the two never form a
cycle. Hooks never look for each other: what they measure goes into `trainer.epoch_metrics`,
what they draw or plot into `trainer.events` (learnsparse.core.events), where the writers
find it. `state_dict()`/`load_state_dict()` go into checkpoints under the hook's `name`, so a
resumed run continues exactly.

A hook that holds modules or parameters of the model (a penalty's weights, a report's layers,
masks) rebinds them in `on_model_changed`: `mapping` is {qualified name: the module now there},
and `trainer.unwrapped_model` is the changed model (the same root object). It never keeps a
reference it was not told about: after a change, the old modules are not the model's.
"""
from __future__ import annotations

import torch


class HookBase:
    trainer = None  # a weakref.proxy to the Trainer, set by Trainer.register_hooks
    name: str | None = None  # key of this hook's state in checkpoints; defaults to the class name

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def before_step(self) -> None: ...

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Named loss terms added to the total this step (regularizers, distillation). Called
        after forward, under the step's autocast: `trainer.batch` is (images, targets) on the
        device and `trainer.outputs` the model's logits for them."""
        return {}

    def after_backward(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...

    def on_model_changed(self, mapping: dict) -> None:
        """The modules named in `mapping` were replaced (optimizer, DDP and record already follow)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1], updated before every step."""
        return self.trainer.progress

    @property
    def state_key(self) -> str:
        return self.name or type(self).__name__

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The terms `extra_losses` returns, checked for clashes when the run starts. By
        convention a plugin's one term is `loss_reg_<its name>`; override to declare others."""
        return (f"loss_reg_{self.state_key}",) if overrides(self, "extra_losses") else ()


def overrides(hook: HookBase, method: str) -> bool:
    """True when the hook implements `method` itself, so the trainer can skip no-op calls."""
    return getattr(type(hook), method) is not getattr(HookBase, method)
