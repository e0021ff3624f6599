"""Support for the tests and tools: loopback servers, the systemd sandbox, hogs, stand-ins."""
