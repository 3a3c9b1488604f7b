"""One module per `tickcast` command; each exposes configure(parser) and run(args) -> int."""
