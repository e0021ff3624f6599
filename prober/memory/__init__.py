"""Memory pressure on this host: the host's and the units' PSI, and who holds the memory.

The values are the core's (prober.core.psi); this layer reads /proc and the cgroup tree.
"""
