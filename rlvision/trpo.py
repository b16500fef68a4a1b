"""sb3-contrib's TRPO at a usable speed for deep encoders: the actor's KL and surrogate gradients in one call each.

sb3-contrib 2.x computes, in ``TRPO._compute_actor_grad``, ``torch.autograd.grad(kl_div, param, create_graph=True)``
once per parameter tensor, each call a full double-backward graph: 22 calls for NatureCNN's policy, 218 for
MobileNet-v4 nano's, so one update of 512 samples took 468 s with ``mobilenetv4_nano_rl`` (7 s with NatureCNN).
:class:`TRPO` asks for all the actor's gradients in one ``autograd.grad`` call (and the surrogate's in one more):
the same gradients, the same parameters kept (those the KL depends on, value-function parameters left out by name as
sb3-contrib does), the same update. Everything else is sb3-contrib's: ``make_agent("trpo")`` and
``rlvision.agents.algo_class("trpo")`` give this class; a zip saved by either class loads in the other.
"""

from __future__ import annotations

import torch
from sb3_contrib import TRPO as ContribTRPO  # noqa: N811 (an acronym class, not a constant)
from torch import nn


class TRPO(ContribTRPO):
    """sb3-contrib's TRPO whose actor gradients are gathered in one autograd call (see the module docstring)."""

    def _compute_actor_grad(self, kl_div: torch.Tensor, policy_objective: torch.Tensor
                            ) -> tuple[list[nn.Parameter], torch.Tensor, torch.Tensor, list[tuple[int, ...]]]:
        """(actor parameters, flat surrogate gradient, flat KL gradient with its graph, gradient shapes), as
        sb3-contrib's method returns them."""
        candidates = [param for name, param in self.policy.named_parameters() if "value" not in name]
        kl_grads = torch.autograd.grad(kl_div, candidates, create_graph=True, retain_graph=True, allow_unused=True)
        kept = [(param, grad) for param, grad in zip(candidates, kl_grads, strict=False) if grad is not None]
        actor_params = [param for param, _ in kept]
        objective_grads = torch.autograd.grad(policy_objective, actor_params, retain_graph=True)
        grad_shape = [grad.shape for _, grad in kept]
        grad_kl = torch.cat([grad.reshape(-1) for _, grad in kept])
        policy_objective_gradients = torch.cat([grad.reshape(-1) for grad in objective_grads])
        return actor_params, policy_objective_gradients, grad_kl, grad_shape
