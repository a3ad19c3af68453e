"""ccl: condensed continual learning."""
import importlib
import importlib.util
import sys
import types
import warnings

# Avalanche imports qpsolvers (for GEM, which ccl does not use), and qpsolvers warns on
# import when no QP solver is installed: a line of noise at every `import ccl` use that
# means nothing for ccl. Filtered here, before anything of ccl imports Avalanche, and by
# its message and module only. (A script that imports Avalanche before ccl sees it.)
warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning, module=r"qpsolvers\b")
# Avalanche's EvaluationPlugin warns when given no logger, though strategy.eval() returns
# the metrics all the same (the README's example reads them there): noise for ccl's users.
warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning,
                        module=r"avalanche\.training\.plugins\.evaluation")


class _ImportedOnUse(types.ModuleType):
    """Stands in for a module until one of its attributes is used.

    Avalanche imports wandb at the top of its confusion-matrix metric, and importing wandb
    makes two temporary folders that a killed process leaves in /tmp. `ccl` uses wandb only
    under `--wandb`: there Avalanche's WandBLogger reads an attribute, which imports it.
    """

    __file__ = None  # inspect.getmodule reads this on every module; it must not import

    def __getattr__(self, name: str):
        if name.startswith("__") and name not in ("__path__", "__all__", "__version__"):
            raise AttributeError(name)  # probes by tools (inspect, pickle) are not uses
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


_wandb_spec = importlib.util.find_spec("wandb") if "wandb" not in sys.modules else None
if _wandb_spec is not None:
    sys.modules["wandb"] = _ImportedOnUse("wandb")
    # Others ask importlib.util.find_spec("wandb") (accelerate, which torchmetrics imports
    # through transformers where both are installed): a module without a spec makes that
    # raise ValueError, so the stand-in carries the real one.
    sys.modules["wandb"].__spec__ = _wandb_spec


__all__ = ["CondensedReplay"]


def __getattr__(name: str):
    """`from ccl import CondensedReplay` imports Avalanche (seconds) only when used, so the
    CLI's quick commands stay quick."""
    if name == "CondensedReplay":
        from ccl.replay import CondensedReplay
        return CondensedReplay
    raise AttributeError(f"module 'ccl' has no attribute {name!r}")
