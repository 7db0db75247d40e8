"""Entry point: `python -m aos_bench [overrides]`, `-m` for sweeps."""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

# conf/ at the top of a checkout, or aos_bench/conf inside an installed package
CONFIG_DIR = next(p for p in (Path(__file__).parent / "conf", Path(__file__).parents[1] / "conf") if p.is_dir())


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """Run one job and return the metric a sweeper would optimise."""
    from aos_bench.data import UsageError
    from aos_bench.job import run
    from aos_bench.tracking import require_server, tracking_key, tracking_uri

    single = HydraConfig.get().mode == RunMode.RUN
    if single:  # a multirun checks the server once, in its launching process (aos_bench.sweep)
        require_server(tracking_uri(cfg.tracking), tracking_key(cfg.tracking))
    interactive = single and sys.stderr.isatty()
    try:
        return run(cfg, interactive=interactive)["test_f1_macro"]
    except UsageError as error:
        raise SystemExit(f"aos_bench: {error}") from None


if __name__ == "__main__":
    main()
