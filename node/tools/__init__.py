"""Tools beside the runtime: replaying studies, summarizing results, dcmtk's binaries, an Orthanc
configuration for the plugin. Nothing in the node's stages imports them."""
