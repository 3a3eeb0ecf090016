"""Check 7: what the budget across runs has left this period."""

from __future__ import annotations

from modelset.doctor.result import CheckResult, first_line
from modelset.settings import Settings
from modelset.storage import Store


def check_budget(settings: Settings, store: Store | None) -> CheckResult:
    """What HIDREAM_BUDGET_IMAGES has left this period at the output location."""
    name = "budget"
    if settings.budget_images is None:
        return CheckResult(
            name, True, "no budget across runs (HIDREAM_BUDGET_IMAGES is not set)", skipped=True
        )
    if store is None:
        return CheckResult(name, True, "not checked: needs a usable output location", skipped=True)
    from modelset.budget import PeriodBudget

    budget = PeriodBudget.from_settings(settings, store)
    assert budget is not None
    try:
        left = budget.left()
    except Exception as exc:
        return CheckResult(name, False, f"could not be read ({first_line(exc)})")
    return CheckResult(
        name,
        left.left > 0,
        left.describe(),
        hint="nothing is sent until it resets; raise HIDREAM_BUDGET_IMAGES to send sooner",
        needed=False,
    )
