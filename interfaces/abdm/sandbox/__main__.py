"""Run the ABDM simulator alone: ``python -m interfaces.abdm.sandbox --port 9100`` (see docs/adapters.md)."""

from __future__ import annotations

import argparse

import uvicorn

from interfaces.abdm.sandbox.server import create_app


def main() -> None:
    parser = argparse.ArgumentParser(description="ABDM gateway / consent manager / HIU / HIP simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    uvicorn.run(create_app(f"http://{args.host}:{args.port}"), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
