"""`tickcast schemas`: the shipped tick and forecast schemas and the Schema Registry.

`register` puts them under the topics' subjects (`<topic>-value`) in the format of
`format.kind`; `show` prints each subject's latest version; `print KIND` prints a shipped schema.
"""

from __future__ import annotations

import argparse

from stream import config


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("register", help="register the schemas under the topics' subjects")
    sub.add_parser("show", help="each subject's latest registered version")
    show = sub.add_parser("print", help="print a shipped schema")
    show.add_argument("kind", choices=("avro", "protobuf", "json-schema"))
    show.add_argument("record", choices=("tick", "forecast"))


def run(args: argparse.Namespace) -> int:
    from stream.formats import schema_text

    if args.action == "print":
        print(schema_text(args.kind, args.record), end="")
        return 0
    from stream.errors import ConfigError
    from stream.service import registry_format

    settings = config.load(args.config)
    wire = registry_format(settings)
    if wire is None:
        raise ConfigError(
            "config error: format.kind is json, which has no schema to register; set "
            "TICKCAST_FORMAT__KIND (avro, protobuf, json-schema) and TICKCAST_FORMAT__REGISTRY_URL"
        )
    if args.action == "register":
        for subject, schema_id in wire.register().items():
            print(f"registered {subject}: schema id {schema_id} ({wire.kind})")
        return 0
    for subject in wire.subjects():
        latest = wire.client.get_latest_version(subject)
        print(f"{subject}: version {latest.version}, schema id {latest.schema_id}")
    return 0
