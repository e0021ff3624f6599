"""The shell: the CLI, the run (check), the watcher, the state store, logs, sd_notify."""
