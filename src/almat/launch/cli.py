"""``almat submit``: the plain function behind the command (the typer wiring lives in ``almat.cli``).

``submit_command`` prints nothing: it returns a summary dict and logs through ``logging``
(``almat.launch.submit``); every expected failure is a ``SubmitError`` whose message is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from almat.launch.submit import SubmitError, submit_campaign

__all__ = ["SubmitError", "submit_command"]


def submit_command(
    campaign_file: str | Path,
    launchpad_file: str | Path | None = None,
    routing_file: str | Path | None = None,
    *,
    fworker_files: list[str | Path] | None = None,
    qadapter_files: list[str | Path] | None = None,
    resume: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Submit ``campaign_file`` to the LaunchPad; returns what was added.

    Returns ``{"campaign", "workflow", "launchpad", "job_store", "n_fireworks", "fw_ids",
    "categories", "partitions", "name_checked", "submitted", "warnings"}``. Raises ``SubmitError``
    (nothing submitted) for a bad campaign file, routing, LaunchPad file, qadapter, unreachable
    MongoDB, or a campaign name already in the JobStore.
    """
    campaign_file = Path(campaign_file)
    if not campaign_file.is_file():
        raise SubmitError(f"campaign file not found: {campaign_file}")
    result = submit_campaign(
        campaign_file,
        launchpad_file,
        routing_file,
        fworker_files=fworker_files,
        qadapter_files=qadapter_files,
        resume=resume,
        dry_run=dry_run,
    )
    return result.as_dict()
