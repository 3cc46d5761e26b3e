"""Live sources and outputs of the ward gateway: Lab Streaming Layer beds, the results table, per-bed LSL
outlets and Prometheus metrics. Needs the ``live`` extra (pylsl, prometheus-client, pyarrow)."""
