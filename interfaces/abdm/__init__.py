"""ABDM (India's Ayushman Bharat Digital Mission): the hospital as Health Information Provider (HIP) and
User (HIU) through the HIE-CM gateway, API v3. See docs/adapters.md "ABDM"."""
