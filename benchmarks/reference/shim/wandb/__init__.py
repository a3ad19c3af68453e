"""A stand-in for wandb (no account, no network): init keeps the config (as wandb.config
does, which PAD_depth.py reads back), everything else does nothing."""


class _Config:
    def __init__(self):
        self._items = {}


config = _Config()


class _Run:
    name = "ref"


run = _Run()


def init(config=None, name=None, **kwargs):
    global run
    items = vars(config) if config is not None and not isinstance(config, dict) else dict(config or {})
    globals()["config"]._items = dict(items)
    run = _Run()
    run.name = name or "ref"
    return run


def log(*args, **kwargs):
    pass


def finish(*args, **kwargs):
    pass


class Settings:
    def __init__(self, *args, **kwargs):
        pass


class Histogram:
    def __init__(self, *args, **kwargs):
        pass


class Image:
    def __init__(self, *args, **kwargs):
        pass
