"""One module per switch kind: how a row runs a decoder layer under its plan."""
