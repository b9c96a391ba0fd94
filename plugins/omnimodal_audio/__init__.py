"""omnimodal's audio plugin (in progress)."""

OMNIMODAL_API_VERSION = 1
