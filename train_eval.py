"""fopru's entry point: ``python train_eval.py [group=option ...] [-m]``; see ``--help``."""

import sys

import hydra
from omegaconf import DictConfig

from fopru.errors import ConfigError
from fopru.run import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train_eval")
def main(cfg: DictConfig) -> None:
    """Run one job; a configuration error ends it with a one-paragraph message and exit code 2."""
    try:
        run(cfg)
    except ConfigError as error:
        print(f"fopru: configuration error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
