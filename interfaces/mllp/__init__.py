"""HL7 v2 over MLLP: framing, the durable message store, acknowledgements and the asyncio listener."""
