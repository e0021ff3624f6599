"""What a run shows: text, JSON and Nagios, the status page, metrics, the web server, notices."""
