"""The Hydra launcher of `hydra/launcher=stacked` (conf/hydra/launcher/stacked.yaml): Hydra instantiates launchers from
the hydra_plugins namespace only, so the class lives here and the work in aos_bench.launch_stacked."""

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from aos_bench.launch_stacked import run_stacked, task_config

log = logging.getLogger(__name__)


class StackedLauncher(Launcher):
    """Hydra launcher: the sweep's jobs in this process, trained in stacks (conf/hydra/launcher/stacked.yaml)."""

    def __init__(self, max_models: int = 64) -> None:
        self.max_models = max_models

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep what launch() needs: the config loader (through the context) and the multirun's config."""
        self.hydra_context, self.config = hydra_context, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Every job's config as the basic launcher composes it, trained by run_stacked; one JobReturn per job. The
        jobs' log lines go to the console and to the sweep dir, formatted by the jobs' logging config."""
        setup_globals()
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        configs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
                config.hydra.runtime.output_dir = str(sweep_dir)  # where job_logging's file handler writes
            configs.append(config)
        configure_log(configs[0].hydra.job_logging, configs[0].hydra.verbose)
        log.info("Launching %d jobs in stacks of at most %d models", len(configs), self.max_models)
        returns = []
        for config, overrides, value in zip(configs, job_overrides, run_stacked(configs, self.max_models), strict=True):
            failed = isinstance(value, BaseException)
            returns.append(JobReturn(list(overrides), task_config(config), config, status=JobStatus.FAILED if failed else JobStatus.COMPLETED))
            returns[-1].return_value = value
        return returns
