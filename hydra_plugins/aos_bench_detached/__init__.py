"""The Hydra launcher of `hydra/launcher=slurm_detached` (conf/hydra/launcher/slurm_detached.yaml): Hydra instantiates
launchers from the hydra_plugins namespace only, so the class lives here and the work in aos_bench.detached."""

from collections.abc import Sequence

from hydra.core.utils import JobReturn

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class DetachedSlurmLauncher(SlurmLauncher):
    """Hydra launcher: the sweep as one SLURM array and a job that closes it after the array's last task, submitted
    without waiting for either. Its jobs run as hydra/launcher=submitit_slurm's do (this class is that launcher)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Submit, and return at once: one JobReturn per job, with no value (the jobs' runs hold their results)."""
        # imported here: `python -m aos_bench` registers this class before MLflow is imported
        from aos_bench.detached import submit

        return submit(self, job_overrides, initial_job_idx)
