"""Before training: how well a source model transfers to the user's data, and how many labels it needs.

``logme`` (the LogME evidence of frozen features), ``embed`` (pooled features of a frozen backbone,
cached per candidate), ``probe`` (cross-validated linear and kNN probes), ``curve`` (top-1 against
labelled images per class) and ``select`` (candidates ranked by transferability and measured latency).
"""
