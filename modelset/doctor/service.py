"""Checks 1 and 2: the token is accepted, and the catalogue lists the templates asked for."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr

from modelset._exceptions import MissingTokenError
from modelset.doctor.result import CheckResult, first_line
from modelset.hidream import (
    AccountError,
    HiDreamClient,
    HiDreamError,
    NoCredits,
    Template,
    TokenRejected,
)
from modelset.settings import Settings

SERVICE_READ_TIMEOUT_S = 15.0
SERVICE_ATTEMPTS = 2
"""The doctor asks the service quickly: a hung service must not hold it for minutes."""


@dataclass
class ServiceProbe:
    """What the token check learnt, for the checks that follow it."""

    token: SecretStr | None = None
    """The token the service accepted; None if it was missing, refused or unchecked."""
    templates: list[Template] | None = None
    why_not: str = "the token check did not run"


def doctor_client(settings: Settings, token: SecretStr) -> HiDreamClient:
    """A client like a run's, but quick to give up: the doctor reports, it does not wait."""
    quick = settings.model_copy(
        update={
            "read_timeout": min(settings.read_timeout, SERVICE_READ_TIMEOUT_S),
            "max_attempts": min(settings.max_attempts, SERVICE_ATTEMPTS),
        }
    )
    return HiDreamClient.from_settings(quick, token=token)


async def check_token(settings: Settings) -> tuple[CheckResult, ServiceProbe]:
    """The token is configured, and the service accepts it on one free, authenticated
    call: the template listing (every call of the API is authenticated; listing the
    templates pays for nothing and is needed by the catalogue check anyway)."""
    name = "token"
    probe = ServiceProbe()
    if settings.api_token is not None and settings.api_token.get_secret_value():
        source = "HIDREAM_API_TOKEN"
        token: SecretStr = settings.api_token
    elif settings.api_token_block:
        source = f"the token in the Prefect Secret block {settings.api_token_block!r}"
        try:
            from modelset.tasks.credentials import resolve_token

            token = await resolve_token(settings)
        except Exception as exc:
            probe.why_not = "no token could be loaded"
            return CheckResult(
                name,
                False,
                f"{source} (HIDREAM_API_TOKEN_BLOCK) could not be loaded: {first_line(exc)}",
                hint="create the block (a Prefect Secret) on the Prefect API this runs "
                "against, or set HIDREAM_API_TOKEN instead",
            ), probe
    else:
        probe.why_not = "no token is configured"
        return CheckResult(
            name,
            False,
            "not configured",
            hint=str(MissingTokenError()).removeprefix("no HiDream API token: "),
        ), probe
    try:
        async with doctor_client(settings, token) as client:
            templates = await client.list_templates()
    except TokenRejected as exc:
        probe.why_not = "the token was rejected"
        hint = (
            f"or update the Secret block {settings.api_token_block!r}"
            if source != "HIDREAM_API_TOKEN"
            else ""
        )
        return CheckResult(name, False, exc.message, hint=hint, refused=True), probe
    except NoCredits as exc:
        probe.why_not = "the account has no credits"
        return CheckResult(
            name, False, exc.message, hint="add credits to the HiDream account", refused=True
        ), probe
    except AccountError as exc:
        probe.why_not = "the account was refused"
        return CheckResult(name, False, exc.message, refused=True), probe
    except HiDreamError as exc:
        probe.why_not = "the service did not answer"
        return CheckResult(
            name,
            False,
            f"could not be checked: {exc.message}",
            hint=f"check HIDREAM_BASE_URL (now {settings.base_url}) and the network",
        ), probe
    probe.token = token
    probe.templates = templates
    return CheckResult(
        name,
        True,
        f"{source} is accepted by {settings.base_url} (credits show only when a set is submitted)",
    ), probe


def check_catalogue(probe: ServiceProbe, template_ids: Sequence[int] = ()) -> CheckResult:
    """The catalogue lists templates, and every template id asked about is in it."""
    name = "catalogue"
    if probe.templates is None:
        return CheckResult(name, False, f"not checked: {probe.why_not}", skipped=True)
    templates = probe.templates
    if not templates:
        return CheckResult(
            name,
            False,
            "the service lists no templates",
            hint="check HIDREAM_BASE_URL: nothing can be generated without a template",
        )
    genders: dict[str, int] = {}
    for template in templates:
        gender = template.gender or "unspecified"
        genders[gender] = genders.get(gender, 0) + 1
    split = ", ".join(f"{count} {gender}" for gender, count in sorted(genders.items()))
    detail = f"{len(templates)} templates ({split})"
    known = {template.id for template in templates}
    wanted = list(dict.fromkeys(template_ids))
    missing = [template_id for template_id in wanted if template_id not in known]
    if missing:
        listed = ", ".join(str(template_id) for template_id in missing)
        return CheckResult(
            name,
            False,
            f"{detail}; not in the catalogue: {listed}",
            hint="pick ids that `modelset templates` lists",
        )
    if wanted:
        detail += f"; {', '.join(str(template_id) for template_id in wanted)} found"
    return CheckResult(name, True, detail)
