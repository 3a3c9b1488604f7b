"""Development tooling beside the service, not inside it: the local Kafka broker and Redis
(`localinfra`), the `tickcast run` process launcher shared by the demo, the benchmarks and the
end-to-end tests (`launch`), the tick feeds derived from the gold series (`feed`) and the demo
(`demo`). `tickcast run` never imports from here (tests/unit/test_cli.py checks)."""
