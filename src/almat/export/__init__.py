"""Export labels (extxyz for MACE, ASE database, JSON lines) and import them into another store."""

from almat.export.io import (
    EXPORT_FORMATS, ExportResult, LabelImportError, export_command, export_labels, import_command, import_labels,
    label_to_mace_atoms, read_jsonl, write_ase_db, write_extxyz, write_jsonl,
)
