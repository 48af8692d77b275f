"""A real CP2K label as a campaign's label job makes it: the ledger counts CP2K's CPU time (a waited-for child
of atomate2's job) in the job's core-seconds, and records CP2K's own timing beside it."""

import pytest
from jobflow import run_locally
from test_cp2k import _oracle, cp2k_env, si8  # noqa: F401 - cp2k_env is a fixture

from almat.campaign.jobs import declare_role
from almat.schemas import StructureDoc, StructureSource, to_structure
from almat.stores import CampaignDB
from almat.stores.ledger import campaign_cost


@pytest.mark.slow  # CP2K under atomate2 and custodian: about 25 s (plus pymatgen's CP2K data once: 40 s)
def test_a_real_cp2k_label_records_its_process_tree_and_cp2ks_timing(cp2k_env, job_store, tmp_path):
    doc = StructureDoc(structure=to_structure(si8()), source=StructureSource.perturbed)
    flow = _oracle().make(doc, campaign="c-cp2k", iteration=0)
    declare_role(flow, "oracle", campaign="c-cp2k", iteration=0)
    run_locally(flow, store=job_store, create_folders=True, root_dir=tmp_path, ensure_success=True)
    with CampaignDB.from_job_store(job_store) as db:
        cost = campaign_cost(db, "c-cp2k")
    entries = {e["job_uuid"]: e for e in cost["entries"]}
    code, parse = entries[flow.jobs[0].uuid], entries[flow.jobs[1].uuid]
    timing = code["code_timing"]
    assert timing["code"] == "cp2k" and timing["file"] == "cp2k.out.gz" and timing["wall_s"] > 0
    assert timing["processes"] == 1 and timing["threads"] >= 1
    # cp2k.psmp ran as a child of the job (custodian waits for it): its CPU time is in the job's core-seconds,
    # and the job lasted at least as long as CP2K did
    assert code["cpu_children_s"] > 0 and code["core_s"] >= code["cpu_children_s"]
    assert code["wall_s"] >= timing["wall_s"]
    assert parse["code_timing"] is None and parse["cpu_children_s"] == pytest.approx(0, abs=0.05)
    assert cost["total"]["labels"] == 1 and cost["total"]["oracle_core_h"] > 0
    print(f"\nCP2K Si8 label: job wall {code['wall_s']:.2f} s, core {code['core_s']:.2f} s (children "
          f"{code['cpu_children_s']:.2f} s); CP2K's own total {timing['wall_s']:.2f} s x {timing['threads']} "
          f"threads = {timing['core_s']:.2f} core-s; parse job {parse['wall_s']:.2f} s")
