"""``BertAdam``, the optimiser CLIP4Clip's released code trains with (``optim.name: bertadam``).

It is Adam as the early BERT code wrote it, and differs from ``torch.optim.AdamW`` in three ways that move
the weights:

- **no bias correction**: the update is ``m / (sqrt(v) + eps)`` with the raw running averages, so the first
  steps are larger than Adam's (``m`` and ``v`` start at zero and are not rescaled);
- **weight decay added to the update**, ``update = m / (sqrt(v) + eps) + wd * w``, then ``w -= lr * update``;
- **gradient clipping per parameter tensor** to norm ``max_grad_norm`` inside the step, not over all
  gradients at once.

The learning rate it is given is the one in force (the trainer's schedule sets it each step:
``warmup_cosine_clip4clip``, :mod:`vlret.train.schedule`). Which parameters decay is decided by name, as
CLIP4Clip's ``prep_optimizer`` does (:func:`released_no_decay`).
"""

from __future__ import annotations

import torch


def released_no_decay(name: str) -> bool:
    """CLIP4Clip's rule: no weight decay for names holding ``bias``, ``LayerNorm.bias`` or
    ``LayerNorm.weight``; CLIP's own layer norms (``ln_*``, ``layer_norm*``), its embeddings and
    ``logit_scale`` therefore decay."""
    return any(part in name for part in ("bias", "LayerNorm.bias", "LayerNorm.weight"))


class BertAdam(torch.optim.Optimizer):
    """See the module docstring; ``betas`` (b1, b2), ``eps`` and ``weight_decay`` per group."""

    def __init__(self, params, lr: float, betas=(0.9, 0.98), eps: float = 1e-6, weight_decay: float = 0.01,
                 max_grad_norm: float = 1.0):  # fmt: skip
        if not lr >= 0 or not eps > 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"BertAdam: invalid lr {lr}, betas {betas} or eps {eps}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "max_grad_norm": max_grad_norm}  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["max_grad_norm"] > 0:  # each tensor on its own
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(p)
                    state["next_v"] = torch.zeros_like(p)
                m, v = state["next_m"], state["next_v"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = m / (v.sqrt() + group["eps"])  # no bias correction
                if group["weight_decay"] > 0:
                    update = update + group["weight_decay"] * p
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
