"""Where a job ran: host, SLURM job id and partition, recorded by every ``store_job``.

``almat.stores.store_job`` passes each job's return value through ``with_run_record``:

- the record goes into the running job's ``metadata["almat_run"]``, which jobflow writes into the
  job's JobStore document (jobflow 0.4 keeps no ``Response.stored_data`` there);
- under FireWorks (the job knows its ``fw_id``) the return value becomes a ``Response`` whose
  ``stored_data`` carries the same record (FireWorks keeps it in the launch's ``action``), merged
  under the function's own ``stored_data``. Output, replace, addition, detour, the stop flags and the
  output schema are kept. Outside FireWorks the return value passes through untouched, since
  jobflow's local manager warns about any ``stored_data``.

A job that replaces itself by a Flow hands its metadata (so this record) to the small ``store_inputs``
job jobflow appends with the same uuid and the next index: ``job_index`` in the record says which
run of the uuid wrote it.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from jobflow import CURRENT_JOB, Response

#: key of ``Job.metadata`` (and so of the JobStore document) holding the record
RUN_RECORD_KEY = "almat_run"


def run_record() -> dict[str, Any]:
    """Host name, and ``slurm_job_id``/``slurm_partition`` when SLURM set them."""
    record: dict[str, Any] = {"hostname": socket.gethostname()}
    for key, env in (("slurm_job_id", "SLURM_JOB_ID"), ("slurm_partition", "SLURM_JOB_PARTITION")):
        if os.environ.get(env):
            record[key] = os.environ[env]
    return record


def with_run_record(returns: Any) -> Any:
    """Record where the running jobflow job ran; see the module docstring."""
    current = CURRENT_JOB.job
    if current is None:  # the function was called directly, not as a job
        return returns
    record = run_record()
    current.metadata[RUN_RECORD_KEY] = {**record, "job_index": current.index}
    if "fw_id" not in current.metadata:
        return returns
    response = returns if isinstance(returns, Response) else Response.from_job_returns(returns)
    response.stored_data = {**record, **(response.stored_data or {})}
    return response
