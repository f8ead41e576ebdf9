"""What users run against a gateway: the `tunegate` command line, SDK examples, smoke.sh."""
