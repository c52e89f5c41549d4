"""fopru's entry point: ``python train_eval.py [group=option ...] [-m]``; see ``--help``."""

import sys

import hydra
from omegaconf import DictConfig

from fopru.cli import check_command_line, report, run_job
from fopru.errors import ConfigError


@hydra.main(version_base="1.3", config_path="conf", config_name="train_eval")
def main(cfg: DictConfig) -> object:
    """Run one job; bad input ends it with a one-paragraph message and exit code 2 (see ``fopru.cli``)."""
    return run_job(cfg)


if __name__ == "__main__":
    try:
        check_command_line(sys.argv[1:])
        main()
    except ConfigError as error:
        report(error)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("fopru: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
