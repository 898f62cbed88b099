"""The shipped Hydra configs (found as `pkg://learnsparse.configs`).

hydra/launcher/{joblib,submitit_local,submitit_slurm}.yaml carry the names of the launcher
plugins' own configs, so `hydra/launcher=joblib` picks ours, and Hydra checks each against the
plugin's schema of the same name (a misspelt key fails). Hydra 1.3 still does that check but
warns on every sweep that it is deprecated; the files are complete on their own, so they work
as well when the check goes, and the warning says nothing a user can act on.
"""
import warnings

warnings.filterwarnings(
    "ignore", message=r"\s*'hydra/launcher/(joblib|submitit_local|submitit_slurm)' is validated against ConfigStore")
