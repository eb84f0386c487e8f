"""Insurance claims: HCX 0.9 / NHCX (India) through a gateway, behind one ``ClaimsGateway`` interface."""
