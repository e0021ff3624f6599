"""Files: atomic writes, the config file and the files it names, read as hostile input."""
