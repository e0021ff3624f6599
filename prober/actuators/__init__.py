"""What acts on a service: systemd (D-Bus, systemctl as the fallback) and its polkit rule."""
