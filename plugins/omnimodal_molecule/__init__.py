"""omnimodal's molecule plugin (in progress)."""

OMNIMODAL_API_VERSION = 1
