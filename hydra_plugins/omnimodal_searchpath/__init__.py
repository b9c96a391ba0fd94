"""Hydra SearchPathPlugin: adds each omnimodal plugin's config directory to the search path.

Plugin authors never write Hydra plugin code: they return directories from the
``omnimodal_config_dirs`` hook, and this single plugin asks the plugin manager for them.

Nothing is swallowed: if omnimodal itself cannot be imported the ImportError propagates, and a
plugin that failed to import (so its configs are missing from the search path) is reported on
stderr with the plugin's name and its import error, so a later "Could not find
'modalities/<name>'" from Hydra has its cause next to it.
"""

import warnings

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

from omnimodal.plugins import get_registry


class OmnimodalSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        registry = get_registry()
        for info in registry.failed_plugins():
            warnings.warn(
                f"omnimodal plugin {info.name!r} ({info.distribution} {info.version}, entry point "
                f"{info.value}) failed to load, so its Hydra configs are not on the search path: "
                f"{info.reason.splitlines()[0]}",
                stacklevel=1,
            )
        for directory in registry.config_dirs:
            search_path.append(provider="omnimodal-plugin", path=f"file://{directory}")
