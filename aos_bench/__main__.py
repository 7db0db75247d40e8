"""Entry point: `python -m aos_bench [overrides]`, `-m` for sweeps."""

import atexit
import gc
import logging
import math
import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aos_bench.checks import hydra_error_line
from aos_bench.errors import Diverged, StoreFailed, UsageError, reject
from aos_bench.paths import CONFIG_DIR
from aos_bench.store import tracking_key, tracking_uri
from aos_bench.sweep import jobs_in_process

log = logging.getLogger("aos_bench")
HYDRA_RAISES = "HYDRA_FULL_ERROR"  # =1: Hydra raises its errors instead of printing them over several lines
SET_BY_CLI = []  # holds True while cli() has set HYDRA_RAISES for the user


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job and return the metric a sweeper would optimise."""
    hydra_reports_errors()  # its values were checked at the door: sweep.SweepTracking (on_run_start, on_multirun_start)
    log.info("loading %s", data_source(cfg))  # at once: the imports below and the decoding take seconds
    single = HydraConfig.get().mode == RunMode.RUN
    uri, key = tracking_uri(cfg.tracking), tracking_key(cfg.tracking)
    from aos_bench.job import run
    from aos_bench.tracking import STORE_ERRORS, Terminated, require_scheme, store_failure

    if single:  # its server was checked before Hydra wrote anything (SweepTracking.on_run_start); a multirun's in on_multirun_start
        require_scheme(uri, key)
    interactive = single and sys.stderr.isatty()
    in_process = single or jobs_in_process(HydraConfig.get().launcher)  # this process runs the sweep too
    try:
        return run(cfg, interactive=interactive)["test_f1_macro"]
    except UsageError as error:
        reject(str(error))
    except Diverged as error:  # the job's run is FAILED by now, with this message in its `error` tag
        if single:
            print(f"aos_bench: {error}; its run is marked FAILED", file=sys.stderr)
            raise SystemExit(1) from None
        log.error("%s; its run is marked FAILED, the sweep goes on (its end names the jobs that failed)", error)
        return math.nan  # the launcher goes on to the next job: one diverged setting must not stop a grid
    except (StoreFailed, *STORE_ERRORS) as error:  # the run so far stays in the store, as far as the store still answers
        if not in_process:
            raise  # a job process of joblib or submitit: its launcher gets the job back, and its sweep ends FAILED
        reject(str(error) if isinstance(error, StoreFailed) else store_failure(uri, key, "log this job's run", error))
    except (KeyboardInterrupt, Terminated) as error:  # the job's run is KILLED by now
        if in_process:
            print(f"aos_bench: {str(error) or 'interrupted (Ctrl-C)'}; a run it had started is marked KILLED", file=sys.stderr)
            raise SystemExit(130 if isinstance(error, KeyboardInterrupt) else 143) from None  # 128 + SIGINT or SIGTERM
        raise  # a job process of joblib or submitit: its launcher gets the job back


def data_source(cfg: DictConfig) -> str:
    """The dataset a job loads and where from, in a few words: `mnist from data/`, `folder my_images/`."""
    if cfg.dataset.name == "folder":
        return f"folder {cfg.dataset.root}"
    if cfg.dataset.name == "synthetic":
        return "synthetic (generated)"
    return f"{cfg.dataset.name} from {cfg.data_dir}"


def hydra_reports_errors() -> None:
    """From here on, Hydra prints a job's errors as it does by default (cli() had it raise the config's errors)."""
    if SET_BY_CLI:
        SET_BY_CLI.clear()
        os.environ.pop(HYDRA_RAISES, None)


def register_launcher() -> None:
    """Make hydra/launcher=stacked and slurm_detached, and hydra/sweeper=checked, instantiable: Hydra finds plugins by scanning the
    hydra_plugins namespace, which an editable install (pip install -e) hides from that scan, so the classes are
    registered by hand as well."""
    from hydra.core.plugins import Plugins

    from hydra_plugins.aos_bench_checked import CheckedSweeper
    from hydra_plugins.aos_bench_detached import DetachedSlurmLauncher
    from hydra_plugins.aos_bench_stacked import StackedLauncher

    for plugin in (StackedLauncher, DetachedSlurmLauncher, CheckedSweeper):
        Plugins.instance().register(plugin)


def group_options(group: str) -> str:
    """A config group's options as Hydra finds them (plugins' launchers included), for the --help page: `a, b, c`."""
    from hydra.core.global_hydra import GlobalHydra

    return ", ".join(sorted(GlobalHydra.instance().config_loader().get_group_options(group)))


def cli() -> None:
    """`python -m aos_bench`: main(), with Hydra's own errors on one line and exit code 2 (HYDRA_FULL_ERROR=1: in full)."""
    # The last step before the interpreter's own teardown: freezing the heap spares it collecting torch's and MLflow's
    # objects, 2 s of CPU that took a SIGTERM'd run 7 to 16 s to exit on a loaded 2-core machine (1.5 to 3.5 s frozen)
    atexit.register(gc.freeze)
    register_launcher()
    OmegaConf.register_new_resolver("aos_bench.options", group_options, replace=True)  # conf/hydra/help/aos_bench.yaml
    if os.environ.get(HYDRA_RAISES):  # the user asked for Hydra's full errors
        main()
        return
    os.environ[HYDRA_RAISES] = "1"
    SET_BY_CLI.append(True)
    try:
        main()
    except HydraException as error:
        reject(hydra_error_line(error, sys.argv[1:]))
    finally:
        hydra_reports_errors()


if __name__ == "__main__":
    cli()
