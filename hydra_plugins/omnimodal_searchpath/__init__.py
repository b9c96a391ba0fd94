"""Hydra SearchPathPlugin: adds each omnimodal plugin's config directory to the search path.

Plugin authors never write Hydra plugin code: they return directories from the
``omnimodal_config_dirs`` hook, and this single plugin asks the plugin manager for them.
"""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class OmnimodalSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        try:
            from omnimodal.plugins import get_registry
        except ImportError:  # omnimodal not importable: nothing to add
            return
        for directory in get_registry().config_dirs:
            search_path.append(provider="omnimodal-plugin", path=f"file://{directory}")
