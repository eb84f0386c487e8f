"""``python -m interfaces.claims.sandbox --port 8090 [--flavour hcx|nhcx]``: the HCX gateway + payers sandbox."""

from __future__ import annotations

import argparse

import uvicorn

from interfaces.claims.sandbox.gateway import Sandbox, create_sandbox_app


def main() -> None:
    parser = argparse.ArgumentParser(description="HCX gateway + payer simulator (interfaces/claims/sandbox)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--flavour", choices=("hcx", "nhcx"), default="hcx")
    args = parser.parse_args()
    box = Sandbox(base_url=f"http://{args.host}:{args.port}", flavour=args.flavour)
    uvicorn.run(create_sandbox_app(box), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
