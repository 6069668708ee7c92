"""``hilt studio``: a local Label Studio server (SQLite, 127.0.0.1)."""

from __future__ import annotations

import argparse
import json

from hilt.cli._common import positive_int as _positive_int


def _cmd_studio(args: argparse.Namespace) -> int:
    from hilt.labeling import studio

    if args.studio_command == "start":
        state = studio.start(port=args.port, data_dir=args.data_dir)
        how = "already running" if state["already_running"] else f"started in {state['seconds']}s"
        print(f"Label Studio {how}: {state['url']}")
        print(f"  user:     {state['user']}")
        print(f"  password: {state['password']}")
        print(f"  token:    {state['token']}")
        print(f"  data:     {state['data_dir']}  (log: {state['log']})")
        print(f"  export LABEL_STUDIO_URL={state['url']} LABEL_STUDIO_API_KEY={state['token']}")
        return 0
    if args.studio_command == "stop":
        print("stopped" if studio.stop(args.data_dir) else "not running")
        return 0
    info = studio.status(args.data_dir)
    print(json.dumps({k: v for k, v in info.items() if k != "password"}, indent=2))
    return 0 if info["running"] else 1


def register(sub) -> None:
    studio = sub.add_parser("studio", help="run a local Label Studio server (SQLite, 127.0.0.1)")
    studio_sub = studio.add_subparsers(dest="studio_command", metavar="ACTION", required=True)
    for action, text in (("start", "start it (or find it running); print URL, user and token"),
                         ("stop", "stop it"), ("status", "print its state; exit 1 if not running")):
        p = studio_sub.add_parser(action, help=text)
        p.add_argument("--data-dir", help="server data (SQLite, media); default .hilt/studio or $HILT_STUDIO_DIR")
        if action == "start":
            p.add_argument("--port", type=_positive_int, default=8080, help="port on 127.0.0.1 (8080)")
        p.set_defaults(func=_cmd_studio)
