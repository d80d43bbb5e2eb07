"""The robustness study as a command (``nnUNetv2_missingmod_study``, run_study.py): every trainer on
one planned dataset, several seeds, every modality subset, the dedicated ceiling and two controls,
run here or through SLURM, and a report that says which trainer to pick (docs/study.md)."""
