"""Plan a run before launching it: memory per device, time, cost and energy (``seekforge plan``).

    from seekforge.plan import PlanSpec, estimate, get_hardware, resolve_arch
    arch, _ = resolve_arch(preset="1b-moe")
    estimate(arch, get_hardware("h100-sxm"), PlanSpec(tokens=20e9, num_gpus=8))["hours"]

Formulas and sources: docs/plan.md.
"""

from seekforge.plan.arch import resolve_arch
from seekforge.plan.estimate import PlanSpec, budget_plan, estimate
from seekforge.plan.hardware import get_hardware

__all__ = ["PlanSpec", "budget_plan", "estimate", "get_hardware", "resolve_arch"]
